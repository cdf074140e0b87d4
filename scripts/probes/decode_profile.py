"""Ad hoc probe (issue notes, cheaper decoding): where tiled detection spends its time on x86 when the
detector decodes down to a given score, without the verifier (cProfile over three passes of a frame).

  PYTHONPATH=. python scripts/probes/decode_profile.py DETECTOR.tflite FRAME [--threshold 0.05]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from pathlib import Path

import cv2

from edge.models import Detector
from edge.tiling import detect_tiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", type=Path)
    parser.add_argument("frame", type=Path)
    parser.add_argument("--threshold", type=float, default=0.05)
    args = parser.parse_args()
    detector = Detector(args.detector, verify=False)
    detector.score_threshold = args.threshold
    frame = cv2.imread(str(args.frame), cv2.IMREAD_COLOR)
    found = detect_tiled(detector, frame)  # warm-up
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(3):
        found = detect_tiled(detector, frame)
    profile.disable()
    print(f"{len(found)} detections; three passes:")
    pstats.Stats(profile).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
