"""Ad hoc probe (docs/verifier.md): what the verifier does to obvious galaxies on a real frame.
For points picked by eye on a galaxy each, the best detection containing the point with and without
the verifier the detector's card names, and which of them the final threshold keeps; --max-side
re-scores only candidates under that many pixels (the verifier card's verification.max_side).

  python scripts/probes/verifier_real_frames.py [--max-side PX] [--detector M] [FRAME X,Y [X,Y ...]]

Without points: the Hubble sample and the 8 galaxies picked by eye there that tests/test_verifier.py
checks (longer sides 27-63 pixels; docs/verifier.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge.models import Detector
from edge.tiling import detect_frame
from tests.test_verifier import HUBBLE_OBVIOUS_GALAXIES as HUBBLE_GALAXIES
from tests.test_verifier import HUBBLE_SAMPLE as HUBBLE

DETECTOR = Path("models/galaxy_detector_int8.tflite")


def best_at(found, x: float, y: float) -> tuple[float, list[int]] | None:
    boxes = found.boxes
    inside = np.flatnonzero((boxes[:, 0] <= x) & (boxes[:, 2] >= x) & (boxes[:, 1] <= y) & (boxes[:, 3] >= y))
    if not len(inside):
        return None
    best = inside[np.argmax(found.scores[inside])]
    return float(found.scores[best]), [int(v) for v in boxes[best]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-side", type=float, help="re-score only candidates under this (default: the card's)"
    )
    parser.add_argument("--detector", type=Path, default=DETECTOR, help="its card names the verifier")
    parser.add_argument("frame", type=Path, nargs="?", default=HUBBLE)
    parser.add_argument("points", nargs="*", help="X,Y in frame pixels")
    args = parser.parse_args()
    points = [tuple(map(float, p.split(","))) for p in args.points] or HUBBLE_GALAXIES
    image = cv2.imread(str(args.frame), cv2.IMREAD_COLOR)
    verified, alone = Detector(args.detector), Detector(args.detector, verify=False)
    threshold = verified.score_threshold
    if args.max_side is not None:
        verified.verifier.max_side = args.max_side
    for detector in (verified, alone):  # keep every candidate: the threshold is applied below
        detector.score_threshold = 0.05
        if detector.verifier is not None:
            detector.verifier.score_threshold = 0.05
    with_verifier, without = detect_frame(verified, image), detect_frame(alone, image)
    kept = [0, 0]
    for x, y in points:
        row = []
        for k, found in enumerate((without, with_verifier)):
            best = best_at(found, x, y)
            kept[k] += best is not None and best[0] >= threshold
            row.append("none" if best is None else f"{best[0]:.2f} {best[1]}")
        print(f"({x:g}, {y:g}): detector alone {row[0]}; with the verifier {row[1]}")
    print(
        f"kept at {threshold}: detector alone {kept[0]} of {len(points)}, with the verifier {kept[1]}; "
        f"all boxes at {threshold}: {int((without.scores >= threshold).sum())} alone, "
        f"{int((with_verifier.scores >= threshold).sum())} with the verifier"
    )


if __name__ == "__main__":
    main()
