"""Ad hoc probe (README, Pi section): how many of an int8 detector's confident detections on samples/
agree between ai-edge-litert's XNNPACK and TFLite's built-in kernels on this machine, counted as
tests/test_pi_userland.py counts them (its _detections_matched, on tests.model_outputs' outputs).
Used to compare int8 calibrations of one network, and verifiers of one detector (the verifier its card
names comes along).

  python scripts/probes/kernel_agreement.py MODEL_int8.tflite [MODEL_int8.tflite ...]

Each model needs its JSON card beside it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.test_pi_userland import _detections_matched

NAME = "galaxy_detector_int8"


def kernel_outputs(model: Path, kernels: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(model, Path(folder) / f"{NAME}.tflite")
        shutil.copy(model.with_suffix(".json"), Path(folder) / f"{NAME}.json")
        companion = json.loads(model.with_suffix(".json").read_text()).get("verifier")
        if companion:  # the verifier the card names runs inside the detection: it comes along
            for suffix in (".tflite", ".json"):
                source = (model.parent / companion).with_suffix(suffix)
                shutil.copy(source, Path(folder) / source.name)
        result = subprocess.run(
            [sys.executable, "-m", "tests.model_outputs", folder, "samples", kernels],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return json.loads(result.stdout)[f"{NAME}.tflite"]


def main() -> None:
    for model in map(Path, sys.argv[1:]):
        matched, confident, worst = _detections_matched(
            kernel_outputs(model, "default"), kernel_outputs(model, "builtin")
        )
        print(f"{model}: {matched} of {confident} ({matched / confident:.3f}), worst IoU {worst:.3f}")


if __name__ == "__main__":
    main()
