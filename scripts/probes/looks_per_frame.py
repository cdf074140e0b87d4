"""Ad hoc probe (docs/detector.md, whole-frame twin): how many boxes a detector keeps on a real frame
as the number of looks changes. Each model runs over the frame in overlapping tiles of its own input
size (one invoke when the input is the frame's size), at each overlap given; no verifier. Models of
other input sizes come from `galaxy-edge export M.keras --to float32 --frame-size WxH`.

  PYTHONPATH=. python scripts/probes/looks_per_frame.py FRAME --models A.tflite [B.tflite ...]
      [--overlaps 53,120,200] [--threshold 0.35]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from edge.models import Detector
from edge.tiling import detect_frame, detect_tiled, tile_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frame", type=Path)
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--overlaps", default="53,120,200", help="tile overlaps in pixels")
    parser.add_argument("--threshold", type=float, default=0.35)
    args = parser.parse_args()
    frame = cv2.imread(str(args.frame), cv2.IMREAD_COLOR)
    if frame is None:
        raise SystemExit(f"{args.frame}: cannot read the image")
    print("| model | input | overlap | tiles (looks) | boxes |")
    print("|---|---|---|---|---|")
    for path in args.models:
        detector = Detector(path, verify=False, twins=False)
        if (detector.height, detector.width) == frame.shape[:2]:
            found = detect_frame(detector, frame)
            count = int((found.scores >= args.threshold).sum())
            print(f"| {path.name} | {detector.width}x{detector.height} | - | 1 | {count} |")
            continue
        for overlap in (int(v) for v in args.overlaps.split(",")):
            if overlap >= min(detector.width, detector.height):
                continue
            found = detect_tiled(detector, frame, overlap)
            tiles = len(tile_layout(detector, frame.shape, overlap))
            count = int((found.scores >= args.threshold).sum())
            print(f"| {path.name} | {detector.width}x{detector.height} | {overlap} | {tiles} | {count} |")


if __name__ == "__main__":
    main()
