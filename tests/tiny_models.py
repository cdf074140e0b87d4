"""Tiny int8 TFLite models with hand-set weights, for testing the edge runtime without
trained models.

- A "bright blob" SSD detector: input 64x64, one anchor per 4x4 cell (16x16 anchors of
  8x8 pixels), class logit = 40 * (cell brightness - 0.5), box deltas zero. A white square
  on black is detected at the anchors it covers.
- A "dominant colour" classifier: input 16x16, logits = 12 * mean of each RGB channel over
  the image (0-1), softmax; labels red, green, blue.

Built with Keras and TFLiteConverter (full-integer int8), and written with a model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DETECTOR_SIZE = 64
CELL = 4


def _convert_int8(model, representative: np.ndarray, path: Path) -> Path:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def dataset():
        for sample in representative:
            yield [sample[None].astype(np.float32)]

    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return path


def detector_anchors(height: int = DETECTOR_SIZE, width: int = DETECTOR_SIZE) -> list[list[float]]:
    rows, columns = height // CELL, width // CELL
    anchors = []
    for row in range(rows):
        for col in range(columns):
            anchors.append([(row + 0.5) / rows, (col + 0.5) / columns, 2 * CELL / height, 2 * CELL / width])
    return anchors


def build_detector(
    folder: Path, name: str = "tiny_detector_int8", shape: tuple[int, int] = (DETECTOR_SIZE, DETECTOR_SIZE)
) -> Path:
    """shape: (height, width), multiples of CELL; another than the default makes a whole-frame twin."""
    import keras

    height, width = shape
    inputs = keras.Input((height, width, 3), batch_size=1)
    scaled = keras.layers.Rescaling(1 / 255)(inputs)
    gray = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(1 / 3), use_bias=False)(
        scaled
    )
    pooled = keras.layers.AveragePooling2D(CELL)(gray)
    logits = keras.layers.Conv2D(
        1,
        1,
        kernel_initializer=keras.initializers.Constant(40.0),
        bias_initializer=keras.initializers.Constant(-20.0),
    )(pooled)
    deltas = keras.layers.Conv2D(4, 1, kernel_initializer="zeros", bias_initializer="zeros")(pooled)
    cells = (height // CELL) * (width // CELL)
    boxes = keras.layers.Reshape((cells, 4), name="boxes")(deltas)
    scores = keras.layers.Reshape((cells, 1), name="scores")(logits)
    model = keras.Model(inputs, [boxes, scores])
    rng = np.random.default_rng(0)
    representative = rng.integers(0, 256, (32, height, width, 3)).astype(np.float32)
    representative[::2] = 0
    representative[1::4] = 255
    path = _convert_int8(model, representative, folder / f"{name}.tflite")
    from edge.interpreter import load_interpreter

    outputs = load_interpreter(path).get_output_details()
    order = {"boxes": 0, "scores": 1} if outputs[0]["shape"][-1] == 4 else {"boxes": 1, "scores": 0}
    card = {
        "format_version": 1,
        "task": "detector",
        "labels": ["galaxy"],
        "input": {"color_order": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "stretch"},
        "decoding": {
            "type": "ssd",
            "anchors_center_yxhw": detector_anchors(height, width),
            "box_variance": [0.1, 0.1, 0.2, 0.2],
            "score_activation": "sigmoid",
            "score_threshold": 0.6,
            "iou_threshold": 0.1,
            "max_detections": 100,
            "outputs": order,
        },
        "quantization": {"step": float(outputs[order["scores"]]["quantization"][0])},
    }
    (folder / f"{name}.json").write_text(json.dumps(card))
    return path


def build_classifier(folder: Path, name: str = "tiny_classifier_int8") -> Path:
    import keras

    inputs = keras.Input((16, 16, 3), batch_size=1)
    # A 16x16 convolution over the whole input computes 12 x the mean of each channel. (A
    # FULLY_CONNECTED layer with 3 inputs crashes tflite-runtime 2.14 on arm64, the Raspberry
    # Pi OS runtime; larger ones run.)
    weights = np.zeros((16, 16, 3, 3), np.float32)
    for channel in range(3):
        weights[:, :, channel, channel] = 12.0 / (255 * 256)
    conv = keras.layers.Conv2D(3, 16, kernel_initializer=keras.initializers.Constant(weights), use_bias=False)
    logits = keras.layers.Flatten()(conv(inputs))
    probabilities = keras.layers.Softmax()(logits)
    model = keras.Model(inputs, probabilities)
    rng = np.random.default_rng(1)
    representative = rng.integers(0, 256, (32, 16, 16, 3)).astype(np.float32)
    for c in range(3):
        representative[c::6, ..., c] = 255
    path = _convert_int8(model, representative, folder / f"{name}.tflite")
    card = {
        "format_version": 1,
        "task": "classifier",
        "labels": ["red", "green", "blue"],
        "colors_rgb": [[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        "input": {"color_order": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "stretch"},
        "output": "probabilities",
    }
    (folder / f"{name}.json").write_text(json.dumps(card))
    return path


VERIFIER_PATCH = 8


def build_verifier(folder: Path, name: str = "tiny_verifier_int8", batch: int = 4) -> Path:
    """A "blue light" verifier: logit = 40 x (mean blue of the patch, 0-1) + 6 x (the prior's
    log2(width / 16)) - 2, over 8x8 BGR patches and their priors in batches of 4."""
    import keras

    from export.tflite import convert

    patches = keras.Input((VERIFIER_PATCH, VERIFIER_PATCH, 3), name="patch")
    priors = keras.Input((3,), name="priors")
    weights = np.zeros((VERIFIER_PATCH, VERIFIER_PATCH, 3, 1), np.float32)
    weights[:, :, 0, 0] = 40.0 / (255 * VERIFIER_PATCH**2)  # BGR: channel 0 is blue
    conv = keras.layers.Conv2D(
        1,
        VERIFIER_PATCH,
        kernel_initializer=keras.initializers.Constant(weights),
        bias_initializer=keras.initializers.Constant(-2.0),
    )
    prior = keras.layers.Dense(
        1,
        kernel_initializer=keras.initializers.Constant(np.array([[0.0], [6.0], [0.0]], np.float32)),
        use_bias=False,
    )
    logit = keras.layers.Add()([keras.layers.Reshape((1,))(conv(patches)), prior(priors)])
    model = keras.Model([patches, priors], logit)
    rng = np.random.default_rng(2)
    representative = rng.integers(0, 256, (32, VERIFIER_PATCH, VERIFIER_PATCH, 3)).astype(np.uint8)
    representative[::3] = 0
    representative[1::3, ..., 0] = 255
    prior_values = rng.uniform(-4, 4, (32, 3)).astype(np.float32)
    path = folder / f"{name}.tflite"
    path.write_bytes(convert(model, "int8", [representative, prior_values], 8, batch=batch))
    card = {
        "format_version": 1,
        "task": "verifier",
        "labels": ["galaxy"],
        "input": {"color_order": "BGR", "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "patch"},
        "verification": {
            "context": 1.5,
            "max_side": 64,
            "max_candidates": 512,
            "candidate_threshold": 0.05,
            "score_threshold": 0.5,
        },
    }
    (folder / f"{name}.json").write_text(json.dumps(card))
    return path
