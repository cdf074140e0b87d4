"""What the twin card's overview_gate_side does on simulated frames (docs/detector.md, "The overview
gated by the twin's candidates"): per frame, the twin's largest candidate and whether the overview
pass keeps a box; then, for each gate, on how many frames it would close and how many of those the
overview had a box on, and whether the gated chain's detections equal the ungated one's.

    PYTHONPATH=. python scripts/probes/overview_gate.py MODELS_DIR FRAMES [--gates 96,128,192] [--limit N]

MODELS_DIR (models/, or a candidate's copy) holds galaxy_detector_int8.tflite whose card names a
whole-frame twin for the frames' size. About 2 minutes per 300 frames here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge.models import Detector
from edge.tiling import detect_overview, detect_whole
from edge.tracking import longer_sides


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--gates", default="96,128,160,192", help="gate sides to tabulate (pixels)")
    parser.add_argument("--limit", type=int, default=0, help="the first N frames only (0: all)")
    args = parser.parse_args()
    gates = [float(g) for g in args.gates.split(",")]
    detector = Detector(args.models / "galaxy_detector_int8.tflite")
    files = sorted(args.frames.glob("*.jpg"))[: args.limit or None]
    largest, kept, identical = [], [], {gate: 0 for gate in gates}
    for path in files:
        frame = cv2.imread(str(path))
        twin = detector.frame_models[frame.shape[:2]]
        largest.append(float(longer_sides(detector.detect_image(frame).boxes).max(initial=0.0)))
        overview, _ = detect_overview(detector, frame, twin.overview_min_side, twin.overview_shrink)
        kept.append(len(overview) > 0)
        twin.overview_gate_side = None
        ungated = detect_whole(detector, frame)
        for gate in gates:
            twin.overview_gate_side = gate
            gated = detect_whole(detector, frame)
            identical[gate] += np.array_equal(gated.boxes, ungated.boxes) and np.array_equal(
                gated.scores, ungated.scores
            )
    largest, kept = np.array(largest), np.array(kept)
    print(f"{len(files)} frames of {args.frames}; the overview keeps a box on {kept.sum()}")
    if kept.any():
        print(f"the twin's largest candidate on those frames: at least {largest[kept].min():.0f} pixels")
    print("gate (pixels) | frames it closes | of them with an overview box | frames identical to ungated")
    for gate in gates:
        closed = largest < gate
        print(f"{gate:.0f} | {closed.sum()} | {(closed & kept).sum()} | {identical[gate]} of {len(files)}")


if __name__ == "__main__":
    main()
