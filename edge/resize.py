"""Shrinking images by area averaging, bit for bit the same on every machine.

OpenCV's INTER_AREA computes fractional box weights in floating point with SIMD code that differs
between builds: OpenCV 4.11 on arm64 (the Pi) and 4.13 on x86 give different pixels for some sizes
(80 -> 69 and 100 -> 69 measured), enough to flip near-tie answers of an int8 classifier. Here each
weight is an integer (the overlap of an output span and an input pixel, in units of 1/output-size
of a pixel), so every sum is an integer below 2**53 and float64 matrix products compute it exactly
whatever order BLAS adds in; rounding is half up, as OpenCV's saturate_cast does. OpenCV has no exact
area mode (INTER_LINEAR_EXACT is bilinear), hence these lines.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=512)
def _overlaps(length: int, size: int) -> np.ndarray:
    """(size, length) integer overlaps of output span i, [i*length, (i+1)*length), with input pixel j,
    [j*size, (j+1)*size): each row sums to `length`."""
    starts = np.arange(size, dtype=np.int64)[:, None] * length
    pixels = np.arange(length, dtype=np.int64)[None, :] * size
    overlap = np.minimum(starts + length, pixels + size) - np.maximum(starts, pixels)
    return np.clip(overlap, 0, None).astype(np.float64)


def area_shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 image (H, W) or (H, W, C) averaged down to (height, width), no larger than the input."""
    in_height, in_width = image.shape[:2]
    if not (0 < width <= in_width and 0 < height <= in_height):
        raise ValueError(f"area_shrink only shrinks: {in_width}x{in_height} -> {width}x{height}")
    channels = image.shape[2] if image.ndim == 3 else 1
    rows = _overlaps(in_height, height) @ image.reshape(in_height, in_width * channels).astype(np.float64)
    rows = rows.reshape(height, in_width, channels).transpose(0, 2, 1)  # (height, channels, in_width)
    sums = rows @ _overlaps(in_width, width).T  # (height, channels, width)
    divisor = in_height * in_width
    averaged = np.floor((sums + divisor // 2) / divisor).astype(np.uint8)
    return averaged.transpose(0, 2, 1).reshape(height, width, *image.shape[2:])
