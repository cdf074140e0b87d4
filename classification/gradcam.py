"""Grad-CAM (Selvaraju et al. 2017): where in a crop the classifier looked for its answer.

The gradient of the chosen class's score with respect to the last convolutional block's
feature maps, averaged over space, weights those maps; their ReLU'd sum, upsampled to the
crop, is the heat map. Keras has no built-in Grad-CAM, so these few lines are ours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def last_conv_layer(model) -> str:
    """Name of the last layer with 4-D (feature map) output before global pooling."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4:
            return layer.name
    raise ValueError("the model has no convolutional feature maps")


def gradcam(model, image: np.ndarray, class_index: int | None = None, layer: str | None = None):
    """(heat map in [0, 1] at the image's size, class index, class probability) for one uint8 image."""
    import cv2
    import keras
    import tensorflow as tf

    layer = layer or last_conv_layer(model)
    # The softmax saturates gradients; the logits layer (when there is one) explains better.
    output = (
        model.get_layer("logits").output if "logits" in [lay.name for lay in model.layers] else model.output
    )
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, output, model.output])
    batch = tf.convert_to_tensor(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        features, scores, probabilities = probe(batch, training=False)
        if class_index is None:
            class_index = int(tf.argmax(probabilities[0]))
        target = scores[:, class_index]
    gradients = tape.gradient(target, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))[0].numpy()
    if cam.max() > 0:
        cam = cam / cam.max()
    cam = cv2.resize(cam.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cam, class_index, float(probabilities[0, class_index])


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map (jet colours) over the RGB image."""
    import cv2

    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def save_gradcams(model, images: np.ndarray, labels: np.ndarray, names: list[str], out: Path, scale: int = 4):
    """One PNG per image: the crop and its Grad-CAM overlay side by side, true and predicted class."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        cam, predicted, probability = gradcam(model, image)
        pair = np.hstack([image, overlay(image, cam)])
        pair = cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        path = out / f"{i:03d}_true-{names[label]}_pred-{names[predicted]}_{probability:.2f}.png"
        cv2.imwrite(str(path), pair[..., ::-1])
        paths.append(path)
    return paths
