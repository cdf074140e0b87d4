"""Ad hoc probe (docs/detector.md, pruning): how far two detectors' mAP differ on one folder of simulated
frames as a whole and on consecutive blocks of frames (the size of a validation set), to see how much
a 40-frame comparison can be trusted. Each detector runs as `evaluate --detector` runs it (its card's
verifier included).

  PYTHONPATH=. python scripts/probes/paired_blocks.py DETECTOR_A.tflite DETECTOR_B.tflite FRAMES [--block 40]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from annotations.dataset import usable_pairs
from detection.evaluate import coco_evaluation, coco_metrics, map_threshold, open_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--block", type=int, default=40, help="frames per block")
    args = parser.parse_args()
    pairs = usable_pairs(args.frames)
    with tempfile.TemporaryDirectory() as workdir:
        detectors = [open_detector(path, Path(workdir)) for path in (args.first, args.second)]
        for detector in detectors:  # every candidate, as `evaluate --detector` scores mAP
            detector.score_threshold = map_threshold(detector)
        found = [coco_evaluation(detector, pairs, ["galaxy"])[1] for detector in detectors]
    rows = []
    spans = [("all", 0, len(pairs))] + [
        (f"block {k}", start, start + args.block) for k, start in enumerate(range(0, len(pairs), args.block))
    ]
    for name, start, stop in spans:
        chosen = pairs[start:stop]
        figures = [coco_metrics(chosen, per_image[start:stop], ["galaxy"]) for per_image in found]
        rows.append((name, len(chosen), *(f[key] for f in figures for key in ("map50", "map"))))
    print("frames | first mAP@0.5 | first mAP@0.5:0.95 | second mAP@0.5 | second mAP@0.5:0.95 | difference")
    for name, count, a50, a, b50, b in rows:
        print(
            f"{name} ({count}) | {a50:.4f} | {a:.4f} | {b50:.4f} | {b:.4f} | {b50 - a50:+.4f} / {b - a:+.4f}"
        )
    for column, name in ((4, "mAP@0.5"), (5, "mAP@0.5:0.95")):
        differences = np.array([row[column] - row[column - 2] for row in rows[1:]])
        low, high, spread = differences.min(), differences.max(), differences.std(ddof=1)
        print(
            f"blocks of {args.block}: {name} differences {low:+.4f} to {high:+.4f}, "
            f"mean {differences.mean():+.4f}, standard deviation {spread:.4f}"
        )


if __name__ == "__main__":
    main()
