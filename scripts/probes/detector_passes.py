"""Ad hoc probe (docs/detector.md): `evaluate --detector` with extra detection passes
patched into the runtime's detect_frame, to test an idea before it earns a place in edge/.

  python scripts/probes/detector_passes.py MODEL DATA OUT [--overview MIN] [--upscale MAX]
      [--galaxies-only] [--gz2]

--overview MIN: one more invoke on the whole frame padded square, its boxes of at least MIN frame
pixels joining the tiles' (SAHI's "standard prediction"). --upscale MAX: the frame enlarged 2x and
tiled again, its boxes under MAX native pixels joining. --galaxies-only: boxes of other labels
dropped, as the chain drops them (a galaxy+star detector).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

import detection.evaluate as evaluate
from edge import tiling
from edge.models import Detections, Detector


def overview(detector: Detector, frame: np.ndarray, min_side: float) -> Detections:
    height, width = frame.shape[:2]
    side = max(height, width)
    square = np.empty((side, side, 3), frame.dtype)
    square[:] = np.median(frame[::8, ::8].reshape(-1, 3), axis=0).astype(frame.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = frame
    found = detector.detect_image(square, (-left, -top))
    found.boxes[:, [0, 2]] = found.boxes[:, [0, 2]].clip(0, width)
    found.boxes[:, [1, 3]] = found.boxes[:, [1, 3]].clip(0, height)
    return found.select(np.flatnonzero(_longer_side(found) >= min_side))


def upscaled(detector: Detector, frame: np.ndarray, max_side: float) -> list[tuple[Detections, np.ndarray]]:
    big = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    parts = []
    for tile in tiling.tile_layout(detector, big.shape):
        found, cut = tiling.detect_tile(detector, big, tile)
        found.boxes /= 2
        keep = np.flatnonzero((_longer_side(found) < max_side) & ~cut)
        parts.append((found.select(keep), np.zeros(len(keep), bool)))
    return parts


def _longer_side(found: Detections) -> np.ndarray:
    return np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--overview", type=float)
    parser.add_argument("--upscale", type=float)
    parser.add_argument("--galaxies-only", action="store_true")
    parser.add_argument("--gz2", action="store_true")
    args = parser.parse_args()

    def detect_frame(detector: Detector, frame: np.ndarray) -> Detections:
        if not tiling.needs_tiling(detector, frame.shape):
            found = detector.detect(frame)
        else:
            layout = tiling.tile_layout(detector, frame.shape)
            parts = [tiling.detect_tile(detector, frame, tile) for tile in layout]
            if args.overview:
                whole = overview(detector, frame, args.overview)
                parts.append((whole, np.zeros(len(whole), bool)))
            if args.upscale:
                parts += upscaled(detector, frame, args.upscale)
            merged = tiling.merge_tiles(parts, detector.iou_threshold, detector.containment)
            found = detector.finish(frame, merged)
        if args.galaxies_only:
            found = found.select(np.flatnonzero(found.class_ids == detector.labels.index("galaxy")))
        return found

    evaluate.detect_frame = detect_frame
    gz2 = Path("../shared/data/gz2_kaggle_1400") if args.gz2 else None
    report = evaluate.evaluate_detector(args.model, args.data, args.out, gz2=gz2, draw=0, verify=False)
    coco = report["coco"]
    recall = ", ".join(f"{row['size']} {row['recall']:.2f}" for row in report["recall_by_size"])
    print(f"{args.data}: mAP@0.5 {coco['map50']:.4f}, mAP@0.5:0.95 {coco['map']:.4f}; recall at the card's")
    print(f"  threshold by size: {recall}")
    if "gz2_central" in report:
        central = report["gz2_central"]
        print(
            f"  GZ2 central recall {central['recall']:.4f}, {central['other_per_image']:.2f} other per image"
        )


if __name__ == "__main__":
    main()
