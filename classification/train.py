"""Training the Galaxy10 CNN: symmetry-respecting augmentation, class weights with partial
rebalancing, early stopping and learning-rate reduction, fixed seeds, best model kept."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classification.data import ImageSet
from classification.model import CNNConfig, build_cnn, count_parameters


@dataclass
class TrainSettings:
    epochs: int = 30
    batch_size: int = 64
    seed: int = 0
    class_weight_power: float = (
        0.5  # 0: none, 1: full inverse-frequency weights (the seed's partial rebalancing)
    )
    augment: bool = True
    patience: int = 6
    verbose: int = 2
    strategy: str = "default"  # default | mirrored (all local devices) | multiworker (TF_CONFIG)
    weak_weight: float = 1.0  # loss weight of a weakly labelled image relative to a labelled one
    weak_repeat: int = 4  # weakly labelled images are few: each is seen this many times per epoch
    teacher: str = ""  # a model whose 8-view mean probabilities are soft targets (distillation)
    teacher_weight: float = 0.0  # share of the loss on the teacher's soft targets
    ema: float = 0.0  # momentum of an exponential moving average of the weights (0: off)


@dataclass
class WeakSet:
    """Images with a set of allowed classes each (e.g. 'one of the spiral classes')."""

    images: np.ndarray  # (N, H, W, 3) uint8
    allowed: np.ndarray  # (N, classes) 0/1
    source: str


def allowed_set_crossentropy(y_true, y_pred):
    """-log of the probability the model gives to the allowed classes. y_true is a 0/1 mask:
    one-hot for an ordinary label (then this is the usual cross-entropy), several classes
    for a weak label such as 'spiral, of whichever kind'."""
    from keras import ops

    allowed = ops.sum(y_true * y_pred, axis=-1)
    return -ops.log(ops.clip(allowed, 1e-7, 1.0))


def distillation_loss(num_classes: int, teacher_weight: float):
    """Allowed-set cross-entropy on the labels mixed with cross-entropy on a teacher's soft targets.
    y_true is (allowed-class mask, soft target) side by side: 2 x num_classes columns."""
    from keras import ops

    def loss(y_true, y_pred):
        mask, soft = y_true[:, :num_classes], y_true[:, num_classes:]
        labelled = allowed_set_crossentropy(mask, y_pred)
        taught = -ops.sum(soft * ops.log(ops.clip(y_pred, 1e-7, 1.0)), axis=-1)
        return (1.0 - teacher_weight) * labelled + teacher_weight * taught

    return loss


def label_accuracy(num_classes: int):
    """Top-1 accuracy against the label part of (mask, soft target) pairs."""
    from keras import ops

    def accuracy(y_true, y_pred):
        return ops.cast(ops.argmax(y_true[:, :num_classes], -1) == ops.argmax(y_pred, -1), "float32")

    return accuracy


def teacher_targets(teacher, images: np.ndarray) -> np.ndarray:
    """The teacher's probabilities averaged over the 8 rotations and flips (its test-time rotation
    ensemble, Dieleman et al. 2015): a target that every augmented view of the image shares, so it is
    computed once, before training. Distilling it into one view carries part of the ensemble's
    accuracy to the single invoke that runs on a Pi."""
    from classification.evaluate import predict

    return predict(teacher, images, rotations=True)


def class_weights(labels: np.ndarray, num_classes: int, power: float) -> dict[int, float]:
    """Inverse-frequency weights raised to `power` and normalised to a mean of 1 over samples."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    weights /= (weights[labels]).mean()
    return {i: float(w) for i, w in enumerate(weights)}


def augmentation(seed: int):
    """Galaxies have no preferred orientation or handedness: any 90-degree rotation and flip,
    plus small shifts and zooms, brightness and contrast changes, and sensor noise. Works on
    images scaled to 0-1."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            # A mirror, then any rotation: together every orientation and both windings of a
            # spiral. (Keras 3's "horizontal_and_vertical" flips both axes at once, a half turn,
            # never a mirror: a model trained with it learned the simulation's arm winding.)
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.5, fill_mode="constant", seed=seed + 1),
            layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 2),
            layers.RandomZoom((-0.12, 0.12), fill_mode="constant", seed=seed + 3),
            layers.RandomBrightness(0.12, value_range=(0, 1), seed=seed + 4),
            layers.RandomContrast(0.15, seed=seed + 5),
            layers.GaussianNoise(0.012, seed=seed + 6),  # about 3 counts in 8 bits
        ],
        name="augment",
    )


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch: int,
    seed: int,
    augment: bool,
    weights=None,
    whole_batches=False,
    sample_weights: np.ndarray | None = None,
    shuffle: bool = False,
):
    """labels: class indices, or (N, classes) allowed-class masks with sample_weights given.
    shuffle: a new order every epoch (training data, augmented or not: weakly labelled images are
    appended after the labelled ones, and unshuffled batches of them alone skew batch norm)."""
    import tensorflow as tf

    if sample_weights is None and weights:
        sample_weights = np.array([weights[int(y)] for y in labels], np.float32)
    tensors = (images, labels) if sample_weights is None else (images, labels, sample_weights)
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        dataset = dataset.shuffle(min(len(labels), 20_000), seed=seed, reshuffle_each_iteration=True)
    # Replicas of a distributed run must see equal batches: the ragged last one is dropped.
    dataset = dataset.batch(batch, drop_remainder=whole_batches)
    if augment:
        augmenter = augmentation(seed)

        def apply(x, *rest):
            x = augmenter(tf.cast(x, tf.float32) / 255.0, training=True)
            x = tf.clip_by_value(x, 0.0, 1.0) * 255.0
            return (x, *rest)

        dataset = dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def training_datasets(train: ImageSet, validation: ImageSet, num_classes: int, settings: TrainSettings):
    """(training dataset, validation dataset, class weights) as train and tune use them."""
    weights = class_weights(train.labels, num_classes, settings.class_weight_power)
    whole = settings.strategy != "default"
    train_data = make_dataset(
        train.images,
        train.labels,
        settings.batch_size,
        settings.seed,
        settings.augment,
        weights if settings.class_weight_power else None,
        whole_batches=whole,
        shuffle=True,
    )
    validation_batch = min(256, settings.batch_size) if whole else 256
    validation_data = make_dataset(
        validation.images, validation.labels, validation_batch, settings.seed, False, whole_batches=whole
    )
    return train_data, validation_data, weights


@functools.cache  # one strategy per process: a multi-worker one joins its cluster once
def distribution_strategy(name: str):
    """tf.distribute strategy by name: "mirrored" replicates over every local device (GPUs);
    "multiworker" spans the machines TF_CONFIG names (trained by classification.multiworker's
    loop: Keras 3's Model.fit does not run under that strategy)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        from classification.multiworker import worker_identity

        worker_identity()  # a clear error without TF_CONFIG, before TensorFlow waits for peers
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def weak_datasets(
    train: ImageSet,
    validation: ImageSet,
    weak: WeakSet | None,
    num_classes: int,
    settings: TrainSettings,
    teacher=None,
):
    """Training data of labelled and weakly labelled images as allowed-class masks (one-hot
    for the labelled ones), and the validation data (labelled only) likewise. With a teacher,
    each mask is followed by the teacher's soft target (validation: the one-hot label again)."""
    if weak is None:
        weak = WeakSet(train.images[:0], np.zeros((0, num_classes), np.float32), "")
    weights = class_weights(train.labels, num_classes, settings.class_weight_power)
    eye = np.eye(num_classes, dtype=np.float32)
    repeat = max(1, settings.weak_repeat)
    images = np.concatenate([train.images, *([weak.images] * repeat)])
    masks = np.concatenate([eye[train.labels], *([weak.allowed.astype(np.float32)] * repeat)])
    validation_targets = eye[validation.labels]
    if teacher is not None:
        soft = [teacher_targets(teacher, train.images)]
        if len(weak.images):
            soft += [teacher_targets(teacher, weak.images)] * repeat
        masks = np.concatenate([masks, np.concatenate(soft)], axis=1)
        validation_targets = np.concatenate([validation_targets, validation_targets], axis=1)
    labelled_weights = np.array([weights[int(y)] for y in train.labels], np.float32)
    if not settings.class_weight_power:
        labelled_weights[:] = 1.0
    sample_weights = np.concatenate(
        [labelled_weights, np.full(len(weak.images) * repeat, settings.weak_weight, np.float32)]
    )
    train_data = make_dataset(
        images,
        masks,
        settings.batch_size,
        settings.seed,
        settings.augment,
        whole_batches=settings.strategy != "default",
        sample_weights=sample_weights,
        shuffle=True,
    )
    validation_data = make_dataset(validation.images, validation_targets, 256, settings.seed, False)
    return train_data, validation_data, weights


def output_folder(out: Path | str, strategy: str) -> Path:
    """Where this process writes classifier.keras and classifier.json: OUT, or for a non-chief
    worker of a multi-worker run OUT/worker_<i>."""
    out = Path(out)
    if strategy != "multiworker":
        return out
    from classification.multiworker import model_path_for, worker_identity

    return model_path_for(out, worker_identity()[0]).parent


def train_classifier(
    train: ImageSet,
    validation: ImageSet,
    config: CNNConfig,
    settings: TrainSettings,
    out: Path | str,
    initial_model=None,
    weak: WeakSet | None = None,
    teacher=None,
):
    """Train and save the best model (by validation accuracy) as out/classifier.keras with
    out/classifier.json (hyperparameters, data summary, history). Returns the model.

    weak: weakly labelled images (real GZ2 spiral / not spiral) trained alongside, with the
    allowed-set cross-entropy. teacher: a model whose 8-view mean probabilities are soft targets
    weighted by settings.teacher_weight (self-distillation of the rotation ensemble)."""
    import keras

    from galaxy_edge.errors import GalaxyEdgeError

    if teacher is not None and settings.strategy == "multiworker":
        raise GalaxyEdgeError("a teacher (distillation) is not supported with --strategy multiworker")
    if settings.ema and settings.strategy == "multiworker":
        raise GalaxyEdgeError("--ema is not supported with --strategy multiworker")
    if not 0.0 <= settings.ema < 1.0:
        raise GalaxyEdgeError(f"--ema {settings.ema}: give a momentum in [0, 1), e.g. 0.999")

    strategy = distribution_strategy(settings.strategy)  # first: multi-worker needs a fresh runtime
    keras.utils.set_random_seed(settings.seed)
    out = output_folder(out, settings.strategy)
    out.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        model = initial_model or build_cnn(config)
    best = out / "classifier.keras"
    if settings.strategy == "multiworker":
        from classification.multiworker import fit_multiworker

        train_data, validation_data, weights = weak_datasets(
            train, validation, weak, config.num_classes, settings
        )
        started = time.perf_counter()
        history = fit_multiworker(
            strategy, model, train_data, validation_data, config.learning_rate, settings, best
        )
        return _finish(model, train, validation, config, settings, weak, weights, history, started, best)
    if teacher is not None:
        train_data, validation_data, weights = weak_datasets(
            train, validation, weak, config.num_classes, settings, teacher
        )
        loss = distillation_loss(config.num_classes, settings.teacher_weight)
        metrics = [label_accuracy(config.num_classes)]  # named "accuracy", as the callbacks expect
    elif weak is not None:
        train_data, validation_data, weights = weak_datasets(
            train, validation, weak, config.num_classes, settings
        )
        loss, metrics = allowed_set_crossentropy, [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        train_data, validation_data, weights = training_datasets(
            train, validation, config.num_classes, settings
        )
        loss, metrics = keras.losses.SparseCategoricalCrossentropy(), ["accuracy"]
    # Compiled here in every case (not only by build_cnn): a --from model would otherwise keep the
    # optimizer it was saved with, ignoring --learning-rate and --ema. Under the strategy's scope, where
    # the model was built, so that the optimizer's variables are mirrored like the model's.
    with strategy.scope():
        model.compile(optimizer=_optimizer(config, settings), loss=loss, metrics=metrics)
    # With EMA, the averaged weights are swapped in for validation and for the checkpoint, so the
    # best epoch is chosen, and saved, by the averaged model (it must come before ModelCheckpoint).
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if settings.ema else []
    callbacks = [
        *ema,
        keras.callbacks.ModelCheckpoint(best, monitor="val_accuracy", mode="max", save_best_only=True),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=settings.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(2, settings.patience // 2)
        ),
    ]
    started = time.perf_counter()
    history = model.fit(
        train_data,
        validation_data=validation_data,
        epochs=settings.epochs,
        callbacks=callbacks,
        verbose=settings.verbose,
    ).history
    return _finish(model, train, validation, config, settings, weak, weights, history, started, best)


def _optimizer(config: CNNConfig, settings: TrainSettings):
    """Adam at the configuration's learning rate, with Polyak averaging of the weights when
    settings.ema is set (Keras' own use_ema; SwapEMAWeights evaluates and saves the average)."""
    import keras

    if settings.ema:
        return keras.optimizers.Adam(config.learning_rate, use_ema=True, ema_momentum=settings.ema)
    return keras.optimizers.Adam(config.learning_rate)


def _finish(model, train, validation, config, settings, weak, weights, history, started, best: Path):
    """Write classifier.json beside the best model and return that model, compiled."""
    import keras

    elapsed = time.perf_counter() - started
    summary = {
        "config": config.to_dict(),
        "parameters": int(model.count_params()),
        "parameters_estimated": count_parameters(config),
        "settings": settings.__dict__,
        "class_weights": weights,
        "data": {
            "scheme": train.scheme,
            "train": train.counts(),
            "validation": validation.counts(),
            "source": train.source,
            "weakly_labelled": None
            if weak is None
            else {
                "source": weak.source,
                "count": len(weak.images),
                "allowed_per_class": weak.allowed.sum(0).tolist(),
            },
        },
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "training_seconds": round(elapsed, 1),
        "best_val_accuracy": float(max(history.get("val_accuracy", [0.0]))),
    }
    (best.parent / "classifier.json").write_text(json.dumps(summary, indent=1))
    if not best.exists():
        return model
    trained = keras.models.load_model(best, compile=False)
    # Saved with the plain sparse cross-entropy, so that loading needs nothing of this module.
    trained.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    trained.save(best)
    return trained
