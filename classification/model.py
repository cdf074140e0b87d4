"""The small Galaxy10 CNN: conv blocks (convolution, batch norm, ReLU, pooling), dropout, and a
global-pooling or dense head; its shape comes from hyperparameters (tuned by keras-tuner)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PARAMETER_BUDGET = 150_000
INPUT_SCALE = 1 / 32


@dataclass
class CNNConfig:
    input_size: int = 69
    num_classes: int = 10
    filters: list[int] = field(default_factory=lambda: [24, 48, 64, 96])
    kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3, 3])
    dense_units: int = 64  # 0: global average pooling straight into the classifier
    dropout: float = 0.3
    learning_rate: float = 2e-3
    # The first convolution's step in pixels, and whether the first block pools: a stride of 2 in place of
    # the pooling keeps the later layers' sizes (10.2 M arm64 instructions a crop against 14.3 M), with
    # the pooling too they see a quarter of the pixels (3.2 M with a 3x3 first kernel; docs/classifier.md).
    first_stride: int = 1
    first_pool: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict) -> CNNConfig:
        known = {k: v for k, v in values.items() if k in CNNConfig.__dataclass_fields__}
        return CNNConfig(**known)


def build_cnn(config: CNNConfig):
    """A compiled Keras model: uint8-range RGB in, class probabilities out.

    The rescaling is the first layer, so TFLite folds it into the int8 input quantization and
    the runtime feeds raw pixels. It divides by 32, not 255: sky cutouts are dark (pixel
    standard deviation near 30), so this standardises the input to unit scale, and batch
    norm's moving statistics converge within a few dozen steps instead of hundreds.
    """
    import keras
    from keras import layers

    if len(config.filters) != len(config.kernel_sizes):
        raise ValueError("filters and kernel_sizes must have the same length")
    if config.first_stride not in (1, 2):
        raise ValueError(f"first_stride must be 1 or 2, not {config.first_stride}")
    inputs = keras.Input((config.input_size, config.input_size, 3), name="image")
    x = layers.Rescaling(INPUT_SCALE, name="rescale")(inputs)
    for i, (filters, kernel) in enumerate(zip(config.filters, config.kernel_sizes, strict=True)):
        stride = config.first_stride if i == 0 else 1
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        # Momentum 0.9, not Keras' 0.99: with 0.99 the moving variance keeps a trace of its
        # initial 1.0 for hundreds of steps and inference sees squashed activations.
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < len(config.filters) - 1 and (i > 0 or config.first_pool):
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    if config.dense_units:
        x = layers.Dense(config.dense_units, activation="relu", name="dense")(x)
        x = layers.Dropout(config.dropout / 2, name="dropout_dense")(x)
    logits = layers.Dense(config.num_classes, name="logits")(x)
    outputs = layers.Softmax(name="probabilities")(logits)
    model = keras.Model(inputs, outputs, name="galaxy10_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


def count_parameters(config: CNNConfig) -> int:
    """Parameters of the model a config builds, without building it."""
    total, channels = 0, 3
    for filters, kernel in zip(config.filters, config.kernel_sizes, strict=True):
        total += kernel * kernel * channels * filters + 4 * filters  # conv (no bias) + batch norm
        channels = filters
    if config.dense_units:
        total += channels * config.dense_units + config.dense_units
        channels = config.dense_units
    return total + channels * config.num_classes + config.num_classes
