"""Ad hoc probe (docs/detector.md): which boxes the card's containment check removes, and
whether they were galaxies. The detector runs with containment off (a copy of its card); each final
box at score 0.25 or more that lies for `containment` of its area (the card's, or --containment when
the card has none, as shipped since session 16) inside a higher-scoring box is
one nested pair. A nested box is a galaxy when it matches a galaxy that is not `difficult` at IoU 0.5
better than its container does. Printed per pair feature: the nested box's centre offset from the
container's centre (in the container's half sides, the larger of x and y), their area ratio and
their score ratio, as shares of galaxies and of the rest.

  PYTHONPATH=. python scripts/probes/nested_boxes.py DETECTOR.tflite FRAMES [--frames N] [--containment 0.8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from miss_causes import galaxy_truth  # this folder (sys.path[0] when run as a script)

from detection.evaluate import map_threshold
from edge.models import Detector
from edge.tiling import detect_frame
from edge.tracking import intersection_over_smaller, iou_matrix

SCORE_FLOOR = 0.25


def uncontained_copy(model: Path, workdir: Path, default: float) -> tuple[Path, float]:
    """A copy of the detector (and its verifier) whose card has containment off, and its containment
    (`default` when it has none)."""
    for path in model.parent.glob("*"):
        if path.suffix in (".tflite", ".json") and not path.stem.endswith("_report"):
            shutil.copy(path, workdir / path.name)
    card_path = workdir / model.with_suffix(".json").name
    card = json.loads(card_path.read_text())
    containment = card["decoding"].get("containment") or default
    card["decoding"]["containment"] = None
    card_path.write_text(json.dumps(card))
    return workdir / model.name, containment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--frames", dest="count", type=int, default=None, help="only the first N frames")
    parser.add_argument("--containment", type=float, default=0.8, help="when the card has none")
    args = parser.parse_args()
    truths = {
        frame: [[float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for row in rows]
        for frame, rows in galaxy_truth(args.frames).items()
    }
    names = sorted(truths)[: args.count]
    pairs = []  # offset, area ratio, score ratio, nested score, is a galaxy
    with tempfile.TemporaryDirectory() as workdir:
        copy, containment = uncontained_copy(args.model, Path(workdir), args.containment)
        detector = Detector(copy)
        detector.score_threshold = map_threshold(detector)
        for name in names:
            path = next(args.frames.glob(f"{name}.*[gp]"))
            found = detect_frame(detector, cv2.imread(str(path), cv2.IMREAD_COLOR))
            found = found.select(np.flatnonzero(found.scores >= SCORE_FLOOR))
            boxes, scores = found.boxes, found.scores
            truth = np.array(truths[name], np.float32).reshape(-1, 4)
            inside = intersection_over_smaller(boxes, boxes, floor=1e-9) >= containment
            inside &= scores[:, None] < scores[None, :]
            overlap = iou_matrix(boxes, truth) if len(truth) else np.zeros((len(boxes), 0))
            for i, j in zip(*np.nonzero(inside), strict=True):
                area = lambda b: max(b[2] - b[0], 1e-6) * max(b[3] - b[1], 1e-6)  # noqa: E731
                if area(boxes[i]) >= area(boxes[j]):
                    continue
                half = (boxes[j, 2:] - boxes[j, :2]) / 2
                offset = np.abs((boxes[i, :2] + boxes[i, 2:]) / 2 - (boxes[j, :2] + boxes[j, 2:]) / 2) / half
                galaxy = bool(len(truth)) and bool(((overlap[i] >= 0.5) & (overlap[i] > overlap[j])).any())
                pairs.append(
                    (
                        float(offset.max()),
                        area(boxes[i]) / area(boxes[j]),
                        scores[i] / scores[j],
                        scores[i],
                        galaxy,
                    )
                )
    table = np.array(pairs, np.float64).reshape(-1, 5)
    galaxy = table[:, 4] == 1
    print(f"{len(names)} frames, {len(table)} nested pairs, {int(galaxy.sum())} nested boxes are galaxies")
    for column, label, edges in (
        (0, "centre offset (container half sides)", (0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.01)),
        (1, "area ratio", (0, 0.01, 0.03, 0.1, 0.3, 1.01)),
        (2, "score ratio", (0, 0.3, 0.5, 0.7, 0.9, 1.01)),
        (3, "nested score", (0.25, 0.35, 0.5, 0.7, 1.01)),
    ):
        print(f"{label} | galaxies | others")
        for low, high in itertools.pairwise(edges):
            chosen = (table[:, column] >= low) & (table[:, column] < high)
            print(f"  {low:g}-{high:g} | {int((chosen & galaxy).sum())} | {int((chosen & ~galaxy).sum())}")


if __name__ == "__main__":
    main()
