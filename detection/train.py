"""Detector training: SSD losses from Keras's focal cross-entropy and Huber, a stream of
augmented crops, checkpoints that survive interruption (BackupAndRestore), best model kept.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detection.anchors import DEFAULT_STRIDES, spec_from_boxes
from detection.data import Frame, SampleStream, TargetEncoder, box_statistics, validation_tiles
from detection.model import DetectorConfig, build_detector


@dataclass
class DetectorTrainSettings:
    epochs: int = 40
    steps_per_epoch: int = 200
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 300
    seed: int = 0
    verbose: int = 2
    freeze_backbone: bool = False  # fine-tuning on a few dozen frames: train the heads only
    matching: str = "atss"  # anchor assignment: "atss" (adaptive) or "ssd" (IoU thresholds)


def _positives(y_true, column: int):
    from keras import ops

    return ops.maximum(ops.sum(y_true[..., column]), 1.0)


def _losses():
    """Box loss (Huber on the deltas of positive anchors) and class loss (sigmoid focal
    cross-entropy on every non-ignored anchor), both normalised by the batch's positives."""
    import keras
    from keras import ops

    class BoxLoss(keras.losses.Loss):
        def __init__(self, name: str = "box_loss", **kwargs) -> None:
            super().__init__(name=name, **kwargs)
            self.huber = keras.losses.Huber(delta=1.0, reduction=None)

        def call(self, y_true, y_pred):
            positive = y_true[..., 4]
            per_anchor = self.huber(y_true[..., :4], y_pred) * 4.0  # Huber averages the 4 deltas
            batch = ops.cast(ops.shape(y_true)[0], "float32")
            return ops.sum(per_anchor * positive, axis=-1) * batch / _positives(y_true, 4)

    class ScoreLoss(keras.losses.Loss):
        def __init__(self, name: str = "score_loss", **kwargs) -> None:
            super().__init__(name=name, **kwargs)
            self.focal = keras.losses.BinaryFocalCrossentropy(
                apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True, reduction=None
            )

        def call(self, y_true, y_pred):
            labels, valid = y_true[..., :-1], y_true[..., -1]
            # Per class (a trailing axis of 1 stops the focal loss averaging over classes),
            # summed over classes as in RetinaNet.
            per_anchor = ops.sum(self.focal(labels[..., None], y_pred[..., None]), axis=-1)
            batch = ops.cast(ops.shape(y_true)[0], "float32")
            positives = ops.maximum(ops.sum(labels), 1.0)
            return ops.sum(per_anchor * valid, axis=-1) * batch / positives

    return BoxLoss(), ScoreLoss()


def anchors_for(frames: Sequence[Frame], input_size: int, strides: Sequence[int] = DEFAULT_STRIDES):
    widths, heights = box_statistics(frames)
    # Crops are taken at native scale with jitter: the boxes keep their frame-pixel sizes.
    return spec_from_boxes(widths, heights, input_size=input_size, strides=tuple(strides))


def _schedule(settings: DetectorTrainSettings):
    import keras

    total = settings.epochs * settings.steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=settings.learning_rate / 10,
        decay_steps=max(total - settings.warmup_steps, 1),
        warmup_target=settings.learning_rate,
        warmup_steps=min(settings.warmup_steps, total // 2),
        alpha=0.02,
    )


def train_detector(
    train_frames: Sequence[Frame],
    validation_frames: Sequence[Frame],
    config: DetectorConfig,
    settings: DetectorTrainSettings,
    out: Path,
    initial=None,
    backbone_weights: str | None = None,
):
    """Train and save OUT/detector.keras (best validation loss) and OUT/detector.json.

    An interrupted run resumes from OUT/backup when started again with the same arguments.
    """
    import keras
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(settings.seed)
    model = initial if initial is not None else build_detector(config, backbone_weights)
    if settings.freeze_backbone:
        model.get_layer("backbone").trainable = False
    encoder = TargetEncoder(config.anchors, len(config.labels), config.box_variance, settings.matching)
    stream = SampleStream(train_frames, encoder, seed=settings.seed)
    count = config.anchors.count()
    signature = (
        tf.TensorSpec((config.input_size, config.input_size, 3), tf.uint8),
        {
            "boxes": tf.TensorSpec((count, 5), tf.float32),
            "scores": tf.TensorSpec((count, len(config.labels) + 1), tf.float32),
        },
    )
    dataset = (
        tf.data.Dataset.from_generator(lambda: iter(stream), output_signature=signature)
        .map(lambda image, target: (tf.cast(image, tf.float32), target))
        .batch(settings.batch_size)
        .prefetch(2)
    )
    val_images, val_targets = validation_tiles(validation_frames, encoder)
    box_loss, score_loss = _losses()
    model.compile(
        optimizer=keras.optimizers.Adam(_schedule(settings), clipnorm=10.0),
        loss={"boxes": box_loss, "scores": score_loss},
    )
    history_path = out / "history.csv"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.ModelCheckpoint(str(out / "detector.keras"), monitor="val_loss", save_best_only=True),
        keras.callbacks.CSVLogger(str(history_path), append=True),
    ]
    started = time.time()
    print(
        f"training {model.name} ({model.count_params():,} parameters, {count} anchors) on "
        f"{len(train_frames)} frames, {settings.epochs} epochs x {settings.steps_per_epoch} steps x "
        f"{settings.batch_size}; validation {len(val_images)} crops of {len(validation_frames)} frames",
        file=sys.stderr,
    )
    history = model.fit(
        dataset,
        epochs=settings.epochs,
        steps_per_epoch=settings.steps_per_epoch,
        validation_data=(val_images.astype(np.float32), val_targets),
        callbacks=callbacks,
        verbose=settings.verbose,
    )
    widths, heights = box_statistics(train_frames)
    summary = {
        "config": config.to_dict(),
        "settings": asdict(settings),
        "data": {
            "train_frames": len(train_frames),
            "validation_frames": len(validation_frames),
            "train_boxes": len(widths),
            "box_size_px": {
                "p1": float(np.percentile(np.sqrt(widths * heights), 1)) if len(widths) else None,
                "p50": float(np.percentile(np.sqrt(widths * heights), 50)) if len(widths) else None,
                "p99": float(np.percentile(np.sqrt(widths * heights), 99)) if len(widths) else None,
            },
        },
        "parameters": int(model.count_params()),
        "train_seconds_this_run": round(time.time() - started, 1),
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    }
    (out / "detector.json").write_text(json.dumps(summary, indent=1))
    return keras.models.load_model(out / "detector.keras", compile=False)
