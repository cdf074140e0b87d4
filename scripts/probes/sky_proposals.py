"""Ad hoc probe (docs/verifier.md, Sky proposals): what the sky proposals (edge.proposals) find on
simulated frames and what they cost.

For the galaxies that are not `difficult` in a `simulate frames` folder, by the truth box's longer side:
the share that some proposal matches at IoU 0.5, and the share matched that the detector with its
verifier (as `evaluate --detector` runs it) does not find at IoU 0.5 and score 0.35; and the proposals a
frame. Thresholds can be overridden. --icount FRAME: arm64 instructions of one frame's proposals in
the Pi userland (edge.icount, OpenCV on one thread). --sample-steps: the proposals with every pixel in
the medians against edge.proposals.SAMPLE_STEP.

  PYTHONPATH=. python scripts/probes/sky_proposals.py MODEL.tflite FRAMES [--frames N]
      [--high-sigma H --low-sigma L --smoothing-sigma S] [--icount FRAME] [--sample-steps]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

import edge.proposals as proposals
from detection.evaluate import SIZE_BINS_PX
from edge.models import Detector
from edge.tiling import detect_frame
from edge.tracking import iou_matrix
from scripts.probes.miss_causes import galaxy_truth


def matched(truth: np.ndarray, boxes: np.ndarray) -> bool:
    return bool(len(boxes)) and bool(iou_matrix(truth[None], boxes)[0].max() >= 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--frames", dest="count", type=int, default=None, help="only the first N frames")
    for name in ("high_sigma", "low_sigma", "smoothing_sigma"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float)
    parser.add_argument("--icount", type=Path, help="count one frame's proposals in the Pi userland")
    parser.add_argument("--sample-steps", action="store_true")
    args = parser.parse_args()
    overrides = {
        k: getattr(args, k) for k in ("high_sigma", "low_sigma", "smoothing_sigma") if getattr(args, k)
    }
    settings = dataclasses.replace(proposals.SkyProposalSettings(), **overrides)
    detector = Detector(args.model)
    rows = galaxy_truth(args.frames)
    names = sorted(rows)[: args.count]
    counts, per_frame, steps = Counter(), [], []
    for name in names:
        frame = cv2.imread(str(next(args.frames.glob(f"{name}.*[gp]"))), cv2.IMREAD_COLOR)
        boxes = proposals.sky_proposals(frame, settings)
        per_frame.append(len(boxes))
        found = detect_frame(detector, frame)
        kept = found.boxes[found.scores >= detector.score_threshold]
        for row in rows[name]:
            truth = np.array([float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")], np.float32)
            side = max(truth[2] - truth[0], truth[3] - truth[1])
            size = int(np.searchsorted(SIZE_BINS_PX, side, side="right")) - 1
            hit = matched(truth, boxes)
            counts[size, "all"] += 1
            counts[size, "proposed"] += hit
            counts[size, "new"] += hit and not matched(truth, kept)
        if args.sample_steps:
            step = proposals.SAMPLE_STEP
            proposals.SAMPLE_STEP = 1
            every = proposals.sky_proposals(frame, settings)
            proposals.SAMPLE_STEP = step
            same = (iou_matrix(boxes, every).max(axis=1) > 0.99).mean() if len(boxes) and len(every) else 0.0
            steps.append((len(every), len(boxes), same))
    print(f"{len(names)} frames, {np.mean(per_frame):.0f} proposals a frame ({settings})")
    print("longer side | galaxies | proposed (IoU 0.5) | proposed, not found by the pair")
    edges = [*SIZE_BINS_PX, None]
    for size in sorted({k[0] for k in counts}):
        total = counts[size, "all"]
        label = f"{edges[size]}-{edges[size + 1]} px" if edges[size + 1] else f">={edges[size]} px"
        print(
            f"{label} | {total} | {counts[size, 'proposed'] / total:.3f} | {counts[size, 'new'] / total:.3f}"
        )
    if steps:
        every, sampled, same = (np.array(column, float) for column in zip(*steps, strict=True))
        change = np.abs(sampled - every) / np.maximum(every, 1)
        print(
            f"SAMPLE_STEP {proposals.SAMPLE_STEP} against every pixel: the count changes by "
            f"{change.max():.3f} at most, {same.min():.3f}-{same.max():.3f} of boxes identical"
        )
    if args.icount:
        from edge.icount import per_run

        instructions, _ = per_run(["proposals", str(args.icount)], 2)
        print(f"{args.icount}: {instructions / 1e6:.1f} M arm64 instructions a frame")


if __name__ == "__main__":
    main()
