"""Ad hoc probe (docs/verifier.md): how much mAP a perfect second stage could add to the shipped
detector and verifier, and whether its lever would be the score or the box. On a `simulate frames`
folder, the verified detections of each frame are changed with the truth's help before COCO scores
them:

- `boxes`: each verified candidate (under the verifier's max_side, from its candidate threshold) that
  overlaps a galaxy at IoU 0.3 or more gets that galaxy's exact box, its score unchanged;
- `scores`: each verified candidate gets score 1 when it matches a galaxy that is not difficult at IoU
  0.5, else 0;
- `both`: scores as for `scores`, but matched at IoU 0.3 and with the galaxy's box.

  PYTHONPATH=. python scripts/probes/refinement_oracle.py DETECTOR.tflite FRAMES
      [--oracle none,boxes,scores,both] [--candidate-threshold T] [--max-candidates N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from verifier_thresholds import staged_pair

import detection.evaluate as evaluation
from annotations.dataset import usable_pairs
from edge.models import Detections
from edge.tracking import iou_matrix

PLAIN_DETECT = evaluation.detect_frame


def oracle_detect(pairs: list, oracle: str, refine_iou: float = 0.3):
    """A detect_frame stand-in that changes the verified candidates of each pair in turn."""
    frames = iter(pairs)
    plain = PLAIN_DETECT

    def detect(detector, image):
        _, annotation = next(frames)
        found = plain(detector, image)
        verifier = detector.verifier
        if oracle == "none" or not len(found):
            return found
        galaxies = [b for b in annotation.boxes if b.name == detector.labels[0]]
        truth = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in galaxies], np.float32).reshape(-1, 4)
        difficult = np.array([b.difficult for b in galaxies], bool)
        sides = np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
        chosen = sides < verifier.max_side
        boxes, scores = found.boxes.copy(), found.scores.copy()
        if len(truth):
            overlaps = iou_matrix(boxes, truth)
            best, iou = overlaps.argmax(axis=1), overlaps.max(axis=1)
        else:
            best, iou = np.zeros(len(boxes), int), np.zeros(len(boxes))
        floor = refine_iou if oracle in ("boxes", "both") else 0.5
        hit = chosen & (iou >= floor)
        if oracle in ("boxes", "both"):
            boxes[hit] = truth[best[hit]]
        if oracle in ("scores", "both"):
            good = hit & ~difficult[best] if len(truth) else hit
            scores[chosen] = np.where(good[chosen], 1.0, 0.0)
        return Detections(boxes, scores.astype(np.float32), found.class_ids)

    return detect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--oracle", default="none,boxes,scores,both")
    parser.add_argument("--candidate-threshold", type=float, help="the verifier card's, when given")
    parser.add_argument("--max-candidates", type=int, help="the verifier card's, when given")
    args = parser.parse_args()
    pairs = usable_pairs(args.frames)
    with tempfile.TemporaryDirectory() as workdir:
        model = args.detector
        if args.candidate_threshold is not None:
            model = staged_pair(model, Path(workdir), args.candidate_threshold)
        detector = evaluation.open_detector(model, Path(workdir))
        detector.score_threshold = evaluation.map_threshold(detector)
        if args.max_candidates:
            detector.verifier.max_candidates = args.max_candidates
        for oracle in args.oracle.split(","):
            evaluation.detect_frame = oracle_detect(pairs, oracle)
            metrics, per_image = evaluation.coco_evaluation(detector, pairs, detector.labels)
            sizes = evaluation.recall_by_size(evaluation.match_frames(pairs, per_image, 0.35))
            recall = ", ".join(f"{row['recall']:.2f}" for row in sizes if row["recall"] is not None)
            print(
                f"{oracle}: mAP@0.5 {metrics['map50']:.4f}, mAP@0.5:0.95 {metrics['map']:.4f}, "
                f"recall by size at 0.35: {recall}",
                flush=True,
            )


if __name__ == "__main__":
    main()
