"""Detector training: SSD losses from Keras's focal cross-entropy and Huber, a stream of
augmented crops, checkpoints that survive interruption (BackupAndRestore), best model kept.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detection.anchors import DEFAULT_STRIDES, spec_from_boxes
from detection.data import (
    Frame,
    ParallelBatches,
    SampleStream,
    TargetEncoder,
    box_statistics,
    sample_batch,
    validation_tiles,
)
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
    workers: int = 0  # processes making batches (0: one stream in the training process)
    time_budget_s: float | None = None  # fit the cosine schedule's length to this wall-clock time


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


def budget_epochs(epoch_seconds: Sequence[float], budget_s: float, elapsed_s: float) -> int:
    """How many epochs a run ends with, given the durations of those done so far: the first
    includes compiling, so later ones set the pace when there are any."""
    done = len(epoch_seconds)
    pace = float(np.median(epoch_seconds[1:])) if done > 1 else float(epoch_seconds[0])
    return done + max(int((budget_s - elapsed_s) // pace), 0)


def cosine_epoch_rate(epoch: int, total_epochs: int, peak: float, floor_fraction: float = 0.02) -> float:
    """The learning rate of `epoch`: a tenth of the peak for the first (warm-up), then a cosine
    from the peak down to floor_fraction of it at the last epoch."""
    if epoch == 0:
        return peak / 10
    if epoch >= total_epochs - 1:
        return peak * floor_fraction
    progress = (epoch - 1) / (total_epochs - 2)
    return peak * (floor_fraction + (1 - floor_fraction) * 0.5 * (1 + np.cos(np.pi * progress)))


def _time_budget_callback(settings: DetectorTrainSettings):
    """Cosine schedule over as many epochs as fit in settings.time_budget_s, planned again at
    every epoch's start from the pace so far. The epoch the plan makes the last runs at the floor
    rate and ends the run, so a run always ends its decay (at least three epochs: warm-up, peak,
    floor; it may overrun by part of an epoch).
    The rate changes once per epoch (a staircase): a JAX fit reads its optimizer state only at
    epoch starts."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch_seconds: list[float] = []
            self.total_epochs = settings.epochs

        def on_train_begin(self, logs=None) -> None:
            self.started = time.time()

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.epoch_started = time.time()
            if self.epoch_seconds:
                planned = budget_epochs(
                    self.epoch_seconds, settings.time_budget_s, self.epoch_started - self.started
                )
                # Counted from this run's first epoch: a resumed run starts at a later one.
                planned += epoch - len(self.epoch_seconds)
                # The first epoch's time is mostly compiling: one more at the peak sets the pace.
                least = epoch + (2 if len(self.epoch_seconds) == 1 else 1)
                self.total_epochs = max(min(planned, settings.epochs), least)
            self.model.optimizer.learning_rate = cosine_epoch_rate(
                epoch, self.total_epochs, settings.learning_rate
            )

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.epoch_seconds.append(time.time() - self.epoch_started)
            if logs is not None:
                logs["learning_rate"] = float(self.model.optimizer.learning_rate)
            if epoch + 1 >= self.total_epochs:
                self.model.stop_training = True
                print(f"time budget: stopping after epoch {epoch + 1}", file=sys.stderr)

    return TimeBudget()


def _training_batches(stream: SampleStream, config: DetectorConfig, settings: DetectorTrainSettings):
    """(batches for fit, a function that releases them)."""
    import keras

    if settings.workers > 0:
        parallel = ParallelBatches(stream, settings.batch_size, settings.workers, settings.seed)
        return iter(parallel), parallel.close
    if keras.backend.backend() != "tensorflow":
        batches = (
            sample_batch(stream, settings.seed, index, settings.batch_size) for index in itertools.count()
        )
        return batches, lambda: None
    import tensorflow as tf

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
    return dataset, lambda: None


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

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(settings.seed)
    model = initial if initial is not None else build_detector(config, backbone_weights)
    if settings.freeze_backbone:
        model.get_layer("backbone").trainable = False
    encoder = TargetEncoder(config.anchors, len(config.labels), config.box_variance, settings.matching)
    stream = SampleStream(train_frames, encoder, seed=settings.seed)
    count = config.anchors.count()
    dataset, release = _training_batches(stream, config, settings)
    val_images, val_targets = validation_tiles(validation_frames, encoder)
    box_loss, score_loss = _losses()
    # With a time budget, a callback sets the rate each epoch.
    rate = settings.learning_rate / 10 if settings.time_budget_s else _schedule(settings)
    model.compile(
        optimizer=keras.optimizers.Adam(rate, clipnorm=10.0),
        loss={"boxes": box_loss, "scores": score_loss},
    )
    history_path = out / "history.csv"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.ModelCheckpoint(str(out / "detector.keras"), monitor="val_loss", save_best_only=True),
        keras.callbacks.CSVLogger(str(history_path), append=True),
    ]
    if settings.time_budget_s:
        callbacks.insert(0, _time_budget_callback(settings))
    started = time.time()
    print(
        f"training {model.name} ({model.count_params():,} parameters, {count} anchors) on "
        f"{len(train_frames)} frames, {settings.epochs} epochs x {settings.steps_per_epoch} steps x "
        f"{settings.batch_size}; validation {len(val_images)} crops of {len(validation_frames)} frames",
        file=sys.stderr,
    )
    try:
        history = model.fit(
            dataset,
            epochs=settings.epochs,
            steps_per_epoch=settings.steps_per_epoch,
            validation_data=(val_images.astype(np.float32), val_targets),
            callbacks=callbacks,
            verbose=settings.verbose,
        )
    finally:
        release()
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
