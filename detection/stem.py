"""A trained detector with a cheaper stem: its first layers swapped for the patchify stem
(detection.model, `DetectorConfig.stem`), which first learns to reproduce what they computed.

The stem is fitted to the trained layers' output at the cut (mean squared error on training
crops, every later layer frozen), so the detector starts close to the trained one before the
usual fine-tuning with the detection losses: a few minutes of regression on a small network
instead of hours of detection training (FitNets' hint training, Romero et al. 2015). Written by
hand: Keras has no layer-replacement distillation.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence

import numpy as np

from detection.data import Frame, SampleStream, TargetEncoder
from detection.model import PATCHIFY_CUT, DetectorConfig, build_detector, transfer_weights

STEM_LAYER_PREFIX = "stem_"


def stem_tiles(stream: SampleStream, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` training crops (uint8 RGB) as detection training draws them, without their boxes."""
    return np.stack([stream.crop(rng)[0] for _ in range(count)])


def with_patchify_stem(
    source,
    source_config: DetectorConfig,
    frames: Sequence[Frame],
    steps: int = 3000,
    batch_size: int = 32,
    pool: int = 4096,
    learning_rate: float = 2e-3,
    seed: int = 0,
):
    """`source` with the patchify stem, fitted for `steps` batches to `source`'s own features at
    the cut, on a pool of `pool` training crops drawn once (augmenting each batch anew costs more
    than the fit; the features of a flipped crop are not the flipped features, so crops are not
    re-flipped). The pool is kept as uint8 and its features as float16: 4,096 crops of 320 pixels
    take 1.6 GB beside the training frames (float32 crops took 5 GB, and with the frames and the
    batch workers the training process was killed for memory on a 23 GB machine).

    Returns (model, config, relative error): the fitted stem's mean squared error over the
    features' variance on other crops (0: the same features)."""
    import keras

    if source_config.stem != "backbone":
        raise ValueError(f"the model already has the {source_config.stem!r} stem")
    config = dataclasses.replace(source_config, stem="patchify")
    model = build_detector(config)
    transfer_weights(source, source_config, model, config)
    source_backbone = source.get_layer("backbone")
    image = keras.Input((config.input_size, config.input_size, 3))
    teacher_cut = keras.Model(
        source_backbone.input, source_backbone.get_layer(PATCHIFY_CUT[config.backbone]).output
    )
    teacher = keras.Model(image, teacher_cut(source.get_layer("to_unit_range")(image)))
    student = keras.Model(model.input, model.get_layer(f"{STEM_LAYER_PREFIX}project_bn").output)
    epochs = max(1, round(steps * batch_size / pool))
    total_steps = epochs * -(-pool // batch_size)
    student.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)),
        loss="mse",
    )
    started = time.time()
    rng = np.random.default_rng(seed)
    stream = SampleStream(frames, TargetEncoder(config.anchors, len(config.labels), config.box_variance))
    tiles = stem_tiles(stream, pool, rng)
    targets = teacher.predict(tiles, batch_size=batch_size, verbose=0).astype(np.float16)
    held_back = stem_tiles(stream, 256, np.random.default_rng(seed + 1))
    held_back_target = teacher.predict(held_back, batch_size=batch_size, verbose=0)
    variance = float(held_back_target.var())
    print(
        f"patchify stem: {pool} crops and their features in {time.time() - started:.0f} s; "
        f"fitting {total_steps} batches of {batch_size}",
        file=sys.stderr,
    )
    student.fit(tiles, targets, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=2)
    predicted = student.predict(held_back, batch_size=batch_size, verbose=0)
    return model, config, float(((predicted - held_back_target) ** 2).mean()) / variance
