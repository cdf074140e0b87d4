"""Ad hoc probe (docs/classifier.md, The classifier's job in the chain): the real GZ2 spiral check through the
chain's own path. On the held-out half of ../shared/data/gz2_kaggle_1400, the shipped detector finds
the central galaxy (the detection evaluation's central-galaxy rule), the chain cuts it (1.5 times the
box, edge.chain.square_crop) and each classifier scores it; beside it, the usual check on the Galaxy10
SDSS cutout (centre 207 pixels) of the same images.

  python scripts/probes/gz2_chain_crops.py CLASSIFIER_int8.tflite [CLASSIFIER_int8.tflite ...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import cv2
import numpy as np

from classification.evaluate import spiral_check
from detection.centred import SIZE_RANGE as CENTRAL_SIZE_RANGE
from edge.chain import ChainSettings, square_crop
from edge.models import Classifier, Detector
from edge.tiling import detect_frame
from galaxy_edge.gz2 import CROP, DEFAULT_GZ2_DIR, weak_training_half

DETECTOR = Path("models/galaxy_detector_int8.tflite")


def central_crops(detector: Detector) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Held-out GZ2 images with a central detection: chain crops, Galaxy10 cutouts, spiral labels and
    the boxes' longer sides."""
    with (DEFAULT_GZ2_DIR / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    held_out = ~weak_training_half([r["galaxy_id"] for r in rows])
    crops, cutouts, spiral, sides = [], [], [], []
    for row in (r for r, keep in zip(rows, held_out, strict=True) if keep):
        image = cv2.imread(str(DEFAULT_GZ2_DIR / "images" / f"{row['galaxy_id']}.jpg"), cv2.IMREAD_COLOR)
        height, width = image.shape[:2]
        found = detect_frame(detector, image)
        boxes, scores = found.boxes, found.scores
        cx, cy = width / 2, height / 2
        contains = (boxes[:, 0] <= cx) & (boxes[:, 2] >= cx) & (boxes[:, 1] <= cy) & (boxes[:, 3] >= cy)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        relative = side / max(width, height)
        plausible = np.flatnonzero(
            contains & (relative >= CENTRAL_SIZE_RANGE[0]) & (relative <= CENTRAL_SIZE_RANGE[1])
        )
        if not len(plausible):
            continue
        best = plausible[np.argmax(scores[plausible])]
        crops.append(square_crop(image, boxes[best], ChainSettings.crop_scale))
        top, left = (height - CROP) // 2, (width - CROP) // 2
        cutouts.append(image[top : top + CROP, left : left + CROP])
        spiral.append(int(row["spiral"]))
        sides.append(float(side[best]))
    return crops, cutouts, np.array(spiral), np.array(sides)


def main() -> None:
    detector = Detector(DETECTOR)
    crops, cutouts, spiral, sides = central_crops(detector)
    print(
        f"{len(crops)} held-out GZ2 images with a central detection; box sides {np.percentile(sides, 5):.0f}-"
        f"{np.percentile(sides, 95):.0f} px (5-95 %), {(sides < 32).sum()} under 32 px"
    )
    for path in map(Path, sys.argv[1:]):
        classifier = Classifier(path)
        chain = spiral_check(classifier.classify(crops), spiral, "decals")
        stamp = spiral_check(classifier.classify(cutouts), spiral, "decals")
        print(
            f"{path}: spiral ROC-AUC on the chain's crops {chain['roc_auc']:.4f}, "
            f"on the Galaxy10 cutouts {stamp['roc_auc']:.4f} ({chain['count']} images)"
        )


if __name__ == "__main__":
    main()
