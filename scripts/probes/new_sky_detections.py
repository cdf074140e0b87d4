"""Ad hoc probe (docs/verifier.md: More frames): which boxes on a real sky frame a detector with
its verifier keeps that another verifier for the same detector did not (IoU under 0.3 with all of
its boxes), the best first, as 48-pixel cut-outs enlarged 4x and brightened 3x in one PNG grid, for
a person to judge.

  PYTHONPATH=. python scripts/probes/new_sky_detections.py DETECTOR.tflite OTHER_VERIFIER.tflite FRAME OUT.png
      [--count 12]

OTHER_VERIFIER needs its card beside it; it is staged beside a copy of the detector.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge.model_card import card_path
from edge.models import Detector
from edge.tiling import detect_frame
from edge.tracking import iou_matrix
from export.verifier import attach_verifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", type=Path)
    parser.add_argument("other_verifier", type=Path)
    parser.add_argument("frame", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=12)
    args = parser.parse_args()
    frame = cv2.imread(str(args.frame), cv2.IMREAD_COLOR)
    found = detect_frame(Detector(args.detector), frame)
    with tempfile.TemporaryDirectory() as folder:
        for model in (args.detector, args.other_verifier):
            shutil.copy(model, Path(folder) / model.name)
            shutil.copy(card_path(model), card_path(Path(folder) / model.name))
        staged = Path(folder) / args.detector.name
        attach_verifier(staged, Path(folder) / args.other_verifier.name)
        other = detect_frame(Detector(staged), frame)
    overlaps = iou_matrix(found.boxes, other.boxes) if len(other) else np.zeros((len(found), 1))
    new = [i for i in np.argsort(-found.scores) if overlaps[i].max() < 0.3]
    print(f"{len(found)} boxes, {len(other)} with the other verifier, {len(new)} new")
    padded = cv2.copyMakeBorder(frame, 24, 24, 24, 24, cv2.BORDER_CONSTANT)
    tiles = []
    for i in new[: args.count]:
        x1, y1, x2, y2 = found.boxes[i]
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        tile = cv2.resize(padded[cy : cy + 48, cx : cx + 48], (192, 192), interpolation=cv2.INTER_NEAREST)
        tile = cv2.convertScaleAbs(tile, alpha=3)
        label = f"{found.scores[i]:.2f} {int(max(x2 - x1, y2 - y1))}px"
        cv2.putText(tile, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
        tiles.append(tile)
    if tiles:
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 6)
        cv2.imwrite(str(args.out), np.vstack([np.hstack(tiles[k : k + 6]) for k in range(0, len(tiles), 6)]))


if __name__ == "__main__":
    main()
