"""arm64 instructions per 32-candidate invoke of verifier network variants (docs/verifier.md, "A
cheaper verifier"): where the shipped verifier's invoke goes, before training any of them.

    PYTHONPATH=. python scripts/probes/verifier_variants_icount.py CALIBRATION.npz [VARIANT ...]

CALIBRATION.npz is a `train --verifier` run's calibration.npz (patches and priors; `make train-quick`
leaves one in runs/quick/verifier). Each variant is fitted for two epochs on it (an untrained network's
int8 export crashed tflite-runtime 2.14 under emulation), exported int8 as `galaxy-edge export` does,
and counted under the Pi userland (edge.icount).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

SHIPPED_BLOCKS = ((16, 2), (16, 1), (32, 2), (32, 1), (32, 2))
VARIANTS = {  # the first convolution, then the separable blocks (channels, stride)
    "shipped": ("full", SHIPPED_BLOCKS),
    "separable_stem": ("separable", SHIPPED_BLOCKS),
    "no_second_16": ("full", ((16, 2), (32, 2), (32, 1), (32, 2))),
    "stride2_stem": ("stride2", SHIPPED_BLOCKS[1:]),  # detection.verifier.build_verifier(stem="stride2")
}


def build(stem: str, blocks, patch: int = 32):
    import keras
    from keras import layers

    def separable(x, channels: int, stride: int):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
        x = layers.Conv2D(channels, 1, use_bias=False)(x)
        return layers.ReLU(6.0)(layers.BatchNormalization()(x))

    pixels, priors = keras.Input((patch, patch, 3), name="patch"), keras.Input((3,), name="priors")
    x = layers.Rescaling(1 / 127.5, -1)(pixels)
    if stem == "separable":
        x = layers.Conv2D(8, 1, use_bias=False)(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x))
    else:
        x = layers.Conv2D(
            8 if stem == "full" else 16, 3, strides=1 if stem == "full" else 2, padding="same", use_bias=False
        )(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    for channels, stride in blocks:
        x = separable(x, channels, stride)
    x = layers.ReLU(6.0)(layers.Dense(32)(layers.Concatenate()([layers.Flatten()(x), priors])))
    return keras.Model([pixels, priors], layers.Dense(1)(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("calibration", type=Path)
    parser.add_argument("variants", nargs="*", help=f"some of {', '.join(VARIANTS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    import keras

    from edge.icount import per_run
    from export.tflite import convert

    data = np.load(args.calibration)
    inputs = [data["patches"].astype(np.float32), data["priors"].astype(np.float32)]
    labels = (data["priors"][:, 0] > np.median(data["priors"][:, 0])).astype(np.float32)
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:  # inside the repo: the userland sees it
        for name in args.variants or VARIANTS:
            model = build(*VARIANTS[name])
            model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
            model.fit(inputs, labels, epochs=2, batch_size=64, verbose=0)
            path = Path(folder) / f"{name}.tflite"
            path.write_bytes(convert(model, "int8", inputs, 64, batch=32))
            count, _ = per_run(["model", str(path.relative_to(Path.cwd()))], 3)
            print(
                f"{name}: {model.count_params()} parameters, {count / 1e6:.1f} M instructions an invoke",
                flush=True,
            )


if __name__ == "__main__":
    main()
