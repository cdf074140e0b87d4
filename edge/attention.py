"""Where the classifier looked: occlusion sensitivity (Zeiler & Fergus 2014) with the TFLite model.

Grad-CAM needs gradients, which a TFLite interpreter (int8 on a Pi, or a Coral) cannot give; occlusion
needs only forward passes. A patch of sky-coloured pixels slides over the crop; where hiding the
pixels lowers the chosen class's probability most is where the answer came from. No maintained
library does this without TensorFlow or PyTorch, so these few lines are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.models import Classifier


@dataclass
class Attention:
    heat: np.ndarray  # (H, W) float32 in [0, 1] at the classifier's input size
    class_index: int
    probabilities: np.ndarray  # the unoccluded image's class probabilities


def occlusion_map(
    classifier: Classifier,
    image_bgr: np.ndarray,
    class_index: int | None = None,
    patch_fraction: float = 0.25,
    steps: int = 7,
) -> Attention:
    """Drop in log-probability of `class_index` (default: the predicted class; the log keeps a
    saturated 0.999 answer informative) when a square patch,
    `patch_fraction` of the side, hides each of `steps` x `steps` positions; averaged per pixel
    over the patches covering it and scaled to [0, 1]."""
    height, width = classifier.height, classifier.width
    image = classifier.resize_to_input(image_bgr)  # the pixels the chain would classify
    probabilities = classifier.classify([image])[0]
    if class_index is None:
        class_index = int(np.argmax(probabilities))
    patch = max(2, round(min(height, width) * patch_fraction))
    # Fill with the sky, not black: a black hole in a sky-coloured crop is itself a feature.
    fill = np.median(image.reshape(-1, 3), axis=0).astype(np.uint8)
    tops = np.linspace(0, height - patch, steps).round().astype(int)
    lefts = np.linspace(0, width - patch, steps).round().astype(int)
    occluded, places = [], []
    for top in tops:
        for left in lefts:
            view = image.copy()
            view[top : top + patch, left : left + patch] = fill
            occluded.append(view)
            places.append((top, left))
    scores = np.log(np.maximum(classifier.classify(occluded)[:, class_index], 1e-6))
    reference = float(np.log(max(probabilities[class_index], 1e-6)))
    drop = np.zeros((height, width), np.float32)
    cover = np.zeros((height, width), np.float32)
    for (top, left), score in zip(places, scores, strict=True):
        drop[top : top + patch, left : left + patch] += reference - score
        cover[top : top + patch, left : left + patch] += 1
    heat = np.clip(drop / np.maximum(cover, 1), 0, None)
    # Soften the patch grid's edges: the map says where, not which patch.
    heat = cv2.GaussianBlur(heat, (0, 0), patch / 3)
    if heat.max() > 0:
        heat /= heat.max()
    return Attention(heat.astype(np.float32), class_index, probabilities)


def overlay(image_bgr: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map in jet colours over the image, at the image's size."""
    heat = cv2.resize(heat, (image_bgr.shape[1], image_bgr.shape[0]), interpolation=cv2.INTER_CUBIC)
    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image_bgr, 1 - alpha, colored, alpha, 0)
