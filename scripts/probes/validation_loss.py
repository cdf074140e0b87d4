"""Detectors' losses on the validation crops a `train --detector` run used, so that a candidate's
best validation loss can be read beside the model it started from (docs/detector.md, the patchify stem).

    PYTHONPATH=. python scripts/probes/validation_loss.py FRAMES MODEL.keras [MODEL.keras ...]

FRAMES and --split (and --seed) as given to `train --detector`: the same validation frames and the
same crops (detection.data.validation_tiles), scored with the training losses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frames", type=Path)
    parser.add_argument("models", type=Path, nargs="+", help=".keras detectors (their .json beside them)")
    parser.add_argument("--split", default="0.9,0.1,0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import numpy as np

    from annotations.split import split_pairs
    from detection.cli import _pairs
    from detection.data import TargetEncoder, load_frames, validation_tiles
    from detection.model import DetectorConfig
    from detection.train import _losses

    pairs = _pairs(args.frames)
    split = split_pairs(pairs, tuple(float(f) for f in args.split.split(",")), args.seed)
    chosen = set(split.files["val"])
    frames = load_frames([p for p in pairs if p[0] in chosen], ["galaxy"])
    for path in args.models:
        summary = json.loads(path.with_suffix(".json").read_text())
        config = DetectorConfig.from_dict(summary["config"])
        matching = summary.get("settings", {}).get("matching", "atss")
        encoder = TargetEncoder(config.anchors, 1, config.box_variance, matching)
        images, targets = validation_tiles(frames, encoder)
        model = keras.models.load_model(path, compile=False)
        box_loss, score_loss = _losses()
        model.compile(loss={"boxes": box_loss, "scores": score_loss})
        pixels = images.astype(np.float32)
        losses = model.evaluate(pixels, targets, batch_size=16, verbose=0, return_dict=True)
        print(f"{path}: " + ", ".join(f"{name} {value:.4f}" for name, value in sorted(losses.items())))


if __name__ == "__main__":
    main()
