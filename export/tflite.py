"""Keras model -> TFLite with TFLiteConverter: float32, float16, or full-integer int8 (int8
input and output, int8 builtin ops only: what a Coral Edge TPU and XNNPACK want).

The batch is fixed to 1 (a dynamic batch loses XNNPACK's fast path), and the input takes raw
0-255 pixels: a model's own Rescaling by a scale alone folds into its first convolution (the
classifier's); one with an offset stays as a MUL and an ADD (the detector's and the verifier's).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

REPRESENTATIVE_COUNT = 300  # calibration images for int8: enough to pin every activation range


def fixed_batch(model, batch: int = 1):
    """The same model behind inputs whose batch is fixed (weights shared, not copied)."""
    import keras

    if len(model.inputs) == 1:
        image = keras.Input(model.input_shape[1:], batch_size=batch, name="image")
        return keras.Model(image, model(image, training=False), name=model.name)
    inputs = [keras.Input(t.shape[1:], batch_size=batch, name=t.name.split(":")[0]) for t in model.inputs]
    return keras.Model(inputs, model(inputs, training=False), name=model.name)


def convert(
    model,
    to: str = "int8",
    representative: np.ndarray | Sequence[np.ndarray] | None = None,
    count: int = REPRESENTATIVE_COUNT,
    seed: int = 0,
    batch: int = 1,
) -> bytes:
    """The .tflite bytes of a Keras model.

    representative: uint8 images (N, H, W, 3) drawn from the training data (or, for a model of
    several inputs, one array per input in the model's order); `count` batches of them, chosen at
    random with `seed`, calibrate the int8 ranges. batch: the inputs' fixed batch.
    """
    import tensorflow as tf

    if to not in ("float32", "float16", "int8"):
        raise ValueError(f"unknown target {to!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed_batch(model, batch))
    if to == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif to == "int8":
        if representative is None or len(representative) == 0 or len(representative[0]) == 0:
            raise ValueError("int8 conversion needs representative images from the training data")
        # One array per model input (a single array: the image), rows aligned.
        arrays = [representative] if isinstance(representative, np.ndarray) else list(representative)
        chosen = np.random.default_rng(seed).permutation(len(arrays[0]))[: count * batch]

        def dataset() -> Iterator[list[np.ndarray]]:
            for start in range(0, len(chosen) - batch + 1, batch):
                yield [a[chosen[start : start + batch]].astype(np.float32) for a in arrays]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()
