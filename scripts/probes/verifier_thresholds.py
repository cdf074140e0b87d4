"""Ad hoc probe (docs/verifier.md): the shipped detector and verifier with other candidate
thresholds, on validation frames, and what verification costs in arm64 instructions on the Hubble
sample at each. Copies of the two models and their cards go to a temporary folder, the verifier's
card edited; nothing in models/ changes.

  python scripts/probes/verifier_thresholds.py DETECTOR.tflite FRAMES [--thresholds 0.15,0.2,0.25]
      [--gz2] [--icount] [--final-floor F]

--final-floor F: evaluate as if the detector's final threshold (0.05 for mAP) also cut the verified
scores, instead of keeping every candidate with its verified score.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import detection.evaluate as evaluation
from edge.model_card import card_path

HUBBLE = Path("samples/hubble_udf_crop_1280x720.jpg")


def staged_pair(detector: Path, folder: Path, threshold: float) -> Path:
    verifier = detector.parent / json.loads(card_path(detector).read_text())["verifier"]
    for model in (detector, verifier):
        shutil.copy(model, folder / model.name)
        shutil.copy(card_path(model), card_path(folder / model.name))
    card = json.loads(card_path(verifier).read_text())
    card["verification"]["candidate_threshold"] = threshold
    card_path(folder / verifier.name).write_text(json.dumps(card))
    return folder / detector.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--thresholds", default="0.15,0.2,0.25")
    parser.add_argument("--gz2", action="store_true")
    parser.add_argument("--icount", action="store_true")
    parser.add_argument("--final-floor", type=float)
    args = parser.parse_args()
    if args.final_floor is not None:
        evaluation.map_threshold = lambda detector: args.final_floor
    gz2 = Path("../shared/data/gz2_kaggle_1400") if args.gz2 else None
    unverified = None
    if args.icount:
        from edge.icount import per_run

        unverified, _ = per_run(["chain-unverified", str(args.detector), "none", str(HUBBLE)], 1)
        print(f"detection without the verifier: {unverified / 1e6:.0f} M arm64 instructions", flush=True)
    for threshold in (float(v) for v in args.thresholds.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            detector = staged_pair(args.detector, Path(folder), threshold)
            report = evaluation.evaluate_detector(
                detector, args.frames, Path(folder) / "eval", gz2=gz2, draw=0
            )
            line = f"candidates from {threshold}: mAP@0.5 {report['coco']['map50']:.4f}, "
            line += f"mAP@0.5:0.95 {report['coco']['map']:.4f}"
            if gz2:
                central = report["gz2_central"]
                line += f", GZ2 recall {central['recall']:.4f} ({central['other_per_image']:.2f} other)"
            if unverified is not None:
                verified, _ = per_run(["chain", str(detector), "none", str(HUBBLE)], 1)
                line += f", verification {(verified - unverified) / 1e6:.0f} M"
            print(line, flush=True)


if __name__ == "__main__":
    main()
