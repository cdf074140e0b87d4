"""Ad hoc probe (docs/verifier.md, Real galaxies in training): how far a verifier's score moves when its
candidate's patch moves by one whole pixel, as it does when a box's centre crosses a half pixel (between
two kernels, or between two frames of a live view). For the runtime's candidates under the verifier's
max_side on labelImg frames: the verified probability with the box as found and shifted by one pixel
right or down.

  PYTHONPATH=. python scripts/probes/verifier_shift.py DETECTOR.tflite FRAMES [--verifier V.tflite ...]
      [--frames-used N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from annotations.dataset import usable_pairs
from edge.model_card import card_path
from edge.models import Detector, candidate_patches, candidate_priors
from edge.tiling import detect_frame
from export.verifier import attach_verifier


def probabilities(verifier, frame: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    patches = candidate_patches(frame, boxes, verifier.patch, verifier.context)
    return 1 / (1 + np.exp(-verifier.logits(patches, candidate_priors(boxes, scores))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument(
        "--verifier", type=Path, action="append", default=[], help="other verifiers to compare"
    )
    parser.add_argument("--frames-used", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        detectors = [Detector(args.detector)]
        for other in args.verifier:  # staged beside a copy of the detector, whose card then names it
            stage = Path(workdir) / other.stem
            stage.mkdir()
            for model in (args.detector, other):
                shutil.copy(model, stage / model.name)
                shutil.copy(card_path(model), card_path(stage / model.name))
            attach_verifier(stage / args.detector.name, stage / other.name)
            detectors.append(Detector(stage / args.detector.name))
        alone = Detector(args.detector, verify=False)
        alone.score_threshold = detectors[0].decode_threshold
        moves: list[list[np.ndarray]] = [[] for _ in detectors]
        for image_path, _ in usable_pairs(args.frames)[: args.frames_used]:
            frame = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            found = detect_frame(alone, frame)
            sides = np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
            small = sides < detectors[0].verifier.max_side
            boxes, scores = found.boxes[small], found.scores[small]
            for k, detector in enumerate(detectors):
                base = probabilities(detector.verifier, frame, boxes, scores)
                for shift in ([1, 0, 1, 0], [0, 1, 0, 1]):
                    moved = probabilities(detector.verifier, frame, boxes + np.float32(shift), scores)
                    moves[k].append(np.abs(moved - base))
    names = [str(detectors[0].verifier.path), *map(str, args.verifier)]
    for name, parts in zip(names, moves, strict=True):
        change = np.concatenate(parts)
        print(
            f"{name}: {len(change) // 2} candidates, score change for a one-pixel move: "
            f"mean {change.mean():.3f}, "
            f"95th percentile {np.percentile(change, 95):.3f}, largest {change.max():.3f}, "
            f"over 0.2 for {np.mean(change > 0.2):.3f}"
        )


if __name__ == "__main__":
    main()
