"""The shipped models under tflite-runtime 2.14 with numpy below 2 (what Raspberry Pi OS Bookworm users
install), in a venv of its own on this x86 machine, against ai-edge-litert on the same inputs.

Run on the same CPU, this isolates the runtime version from the two other things that change int8
outputs: the kernel library (ai-edge-litert hands int8 models to XNNPACK, tflite-runtime 2.14 on x86
runs TFLite's built-in kernels) and the CPU (arm64's built-in kernels round differently from x86's; see
tests/test_pi_userland.py). The venv is built once into .cache/tflite-runtime-2.14 and reused; where pip
cannot reach a package index the test is skipped saying why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.model_outputs import standalone_models
from tests.test_pi_userland import _detections_matched, _model_outputs, _top1_changes, runtime_versions

VENV = REPO / ".cache" / "tflite-runtime-2.14"
# Raspberry Pi OS Bookworm's combination; OpenCV as in the emulated Pi userland.
PINNED = ("tflite-runtime==2.14.0", "numpy==1.26.4", "opencv-python-headless==4.11.0.86")
# The models that tests.model_outputs runs (a verifier or a whole-frame twin runs inside its detector's).
SHIPPED = standalone_models(REPO / "models")

# Measured (shipped models, bundled samples): against ai-edge-litert with XNNPACK, the int8 detector
# with its verifier matched 358 of 431 confident detections at IoU 0.9 (session 17's cards: no containment
# check, the overview pass, NMS at 0.4; before them 330 of 396; re-scoring under 64 pixels: 309 of
# 374; with the verifier trained on 400 frames: 206 of 242; XNNPACK's int8 arithmetic rounds
# differently from the built-in kernels; without the verifier 147 of 185; the four-phase detector: 178 of
# 203, the three-phase: 169 of 193): a lower bound at that. The int8 classifier
# agreed on 196 of 199 crops; the 3 others have their top two classes tied under XNNPACK, and every crop
# without a tie must agree (see _top1_changes).
XNNPACK_BOUNDS = {"detector": 0.82}


@pytest.fixture(scope="module")
def runtime_214_python() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == "\n".join(PINNED):
        return python
    steps = (
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINNED],
    )
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"could not build the tflite-runtime 2.14 venv in {VENV}: {reason}")
    stamp.write_text("\n".join(PINNED))
    return python


def test_the_venv_runs_the_edge_runtime_on_tflite_runtime_2_14(runtime_214_python: Path) -> None:
    assert runtime_versions(runtime_214_python) == ("tflite_runtime", "2.14.0", "1.26.4")


@pytest.mark.skipif(not SHIPPED, reason="no shipped models in models/")
def test_shipped_models_give_the_same_outputs_under_tflite_runtime_2_14(runtime_214_python: Path) -> None:
    """Every shipped model loads in tflite-runtime 2.14. With the same (built-in) kernels its int8
    outputs are ai-edge-litert's bit for bit, float32 ones to float rounding; against ai-edge-litert's
    default XNNPACK kernels, the same top-1 class for every crop without a tie at the top and the
    measured share of the confident detections at IoU 0.9."""
    old = _model_outputs(runtime_214_python, "default")  # a Pi OS user's settings
    same_kernels = _model_outputs(Path(sys.executable), "builtin")
    xnnpack = _model_outputs(Path(sys.executable), "default")
    assert sorted(old) == sorted(same_kernels) == [p.name for p in SHIPPED]
    problems = []
    for name in old:
        int8 = "int8" in name
        if isinstance(old[name][0], list):  # classifier probabilities, one row per crop
            a, b, x = np.array(old[name]), np.array(same_kernels[name]), np.array(xnnpack[name])
            largest, agreement = float(np.abs(a - b).max()), float((a.argmax(1) == x.argmax(1)).mean())
            changed, ties = _top1_changes(a, x)
            print(
                f"{name}: largest difference {largest:.2g} with the same kernels; against XNNPACK "
                f"top-1 agreement {agreement:.4f} of {len(a)} ({ties} tied at the top), largest "
                f"difference {np.abs(a - x).max():.4f}"
            )
            if largest > (0.0 if int8 else 1e-4) or (a.argmax(1) != b.argmax(1)).any():
                problems.append(f"{name}: differs from ai-edge-litert's built-in kernels by {largest:.3g}")
            if changed:
                problems.append(f"{name}: {changed} crops without a tie changed their top-1 class (XNNPACK)")
            continue
        if int8 and old[name] != same_kernels[name]:
            problems.append(f"{name}: int8 detections differ from ai-edge-litert's built-in kernels")
        matched, confident, worst = _detections_matched(old[name], same_kernels[name])
        if matched < confident:
            problems.append(f"{name}: {matched} of {confident} confident detections at IoU 0.9")
        matched, confident, worst = _detections_matched(old[name], xnnpack[name])
        print(
            f"{name}: against XNNPACK {matched} of {confident} confident detections at IoU 0.9, "
            f"worst {worst:.3f}"
        )
        if matched < confident * (XNNPACK_BOUNDS["detector"] if int8 else 1.0):
            problems.append(f"{name}: {matched} of {confident} confident detections match XNNPACK's")
    assert not problems, problems
