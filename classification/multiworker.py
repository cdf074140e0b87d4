"""Multi-machine classifier training: tf.distribute.MultiWorkerMirroredStrategy with a custom
training loop.

Keras 3's Model.fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585,
open; here with Keras 3.15 and TensorFlow 2.21: "Attempt to convert a value (PerReplica...)"),
so the steps are written out with `strategy.run`, as TensorFlow's multi-worker custom-loop
tutorial does. Every worker runs the same command with its own TF_CONFIG; gradients and batch
normalization statistics are all-reduced, so the workers hold identical weights. Validation is
all-reduced too, so every worker takes the same early-stopping and learning-rate decisions (a
worker that stopped alone would hang the others in the next all-reduce).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from galaxy_edge.errors import GalaxyEdgeError


def worker_identity() -> tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG; a clear error without it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise GalaxyEdgeError(
            "--strategy multiworker needs TF_CONFIG on every worker, e.g. "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        index = int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise GalaxyEdgeError(f"TF_CONFIG is not a worker cluster ({error}): {raw}") from None
    return index, len(workers)


def model_path_for(out: Path, index: int) -> Path:
    """The chief (worker 0) writes OUT/classifier.keras; the others OUT/worker_<i>/, so that
    workers sharing a file system never write the same file."""
    return out / "classifier.keras" if index == 0 else out / f"worker_{index}" / "classifier.keras"


def _synchronized_batch_norm(model, on: bool) -> None:
    import keras

    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = on


def fit_multiworker(
    strategy, model, train_data, validation_data, learning_rate: float, settings, best_path: Path
) -> dict:
    """Train `model` (built in the strategy's scope) on datasets of (images, allowed-class
    masks, sample weights) and (images, masks); keep the best by validation accuracy at
    best_path (this worker's `model_path_for`). Returns the history (loss, val_loss,
    val_accuracy, learning_rate)."""
    import keras
    import tensorflow as tf

    index, _ = worker_identity()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_batches = strategy.experimental_distribute_dataset(train_data.with_options(options))
    validation_batches = strategy.experimental_distribute_dataset(validation_data.with_options(options))
    global_batch = settings.batch_size
    _synchronized_batch_norm(model, True)
    with strategy.scope():
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(model.trainable_variables)

    def per_example_loss(masks, probabilities):
        allowed = tf.reduce_sum(masks * probabilities, axis=-1)
        return -tf.math.log(tf.clip_by_value(allowed, 1e-7, 1.0))

    @tf.function
    def train_step(batch):
        def step(images, masks, weights):
            with tf.GradientTape() as tape:
                probabilities = model(images, training=True)
                losses = per_example_loss(masks, probabilities) * weights
                loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return loss

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=batch), axis=None)

    @tf.function
    def validation_step(batch):
        def step(images, masks):
            probabilities = model(images, training=False)
            hits = tf.reduce_sum(tf.gather(masks, tf.argmax(probabilities, -1), batch_dims=1))
            losses = tf.reduce_sum(per_example_loss(masks, probabilities))
            return tf.stack([hits, losses, tf.cast(tf.shape(images)[0], tf.float32)])

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=batch), axis=None)

    history: dict[str, list[float]] = {"loss": [], "val_loss": [], "val_accuracy": [], "learning_rate": []}
    best_accuracy, since_best, best_loss, since_loss = -1.0, 0, np.inf, 0
    plateau = max(2, settings.patience // 2)
    for epoch in range(settings.epochs):
        losses = [float(train_step(batch)) for batch in train_batches]
        totals = np.sum([validation_step(batch).numpy() for batch in validation_batches], axis=0)
        accuracy, val_loss = totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)
        rate = float(optimizer.learning_rate.numpy())
        for key, value in zip(history, (float(np.mean(losses)), val_loss, accuracy, rate), strict=True):
            history[key].append(float(value))
        if settings.verbose:
            print(
                f"worker {index} epoch {epoch + 1}/{settings.epochs}: loss {history['loss'][-1]:.4f} "
                f"val_loss {val_loss:.4f} val_accuracy {accuracy:.4f} learning_rate {rate:.2e}",
                flush=True,
            )
        if accuracy > best_accuracy:
            best_accuracy, since_best = accuracy, 0
            _synchronized_batch_norm(model, False)  # a plain layer in the saved file
            model.save(best_path)
            _synchronized_batch_norm(model, True)
        else:
            since_best += 1
        if val_loss < best_loss:
            best_loss, since_loss = val_loss, 0
        else:
            since_loss += 1
            if since_loss >= plateau:  # ReduceLROnPlateau: halve the rate
                optimizer.learning_rate.assign(rate * 0.5)
                since_loss = 0
        if since_best >= settings.patience:  # EarlyStopping (every worker decides alike)
            break
    _synchronized_batch_norm(model, False)
    return history
