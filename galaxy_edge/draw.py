"""Drawing labelled boxes on frames with OpenCV, shared by the annotation review tools and
the edge runtime's annotated-frame sink."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from galaxy_edge.errors import MissingDependencyError


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("opencv-python-headless", "edge", "drawing boxes") from None
    return cv2


def draw_boxes(
    image_bgr: np.ndarray,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    colors_bgr: Sequence[tuple[int, int, int]],
    thickness: int | None = None,
) -> np.ndarray:
    """Draw boxes (x1, y1, x2, y2 pixels) with a filled caption each; returns the image."""
    cv2 = _cv2()
    height, width = image_bgr.shape[:2]
    scale = float(np.clip(min(width, height) / 1600, 0.35, 0.6))
    thickness = thickness or max(1, round(min(width, height) / 600))
    for box, label, color in zip(boxes, labels, colors_bgr, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(image_bgr, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        if not label:
            continue
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y2 + th + base + 2, height - 1)
        cv2.rectangle(image_bgr, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, cv2.FILLED)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(
            image_bgr,
            label,
            (x1 + 1, ty - base + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            text_color,
            1,
            cv2.LINE_AA,
        )
    return image_bgr


def color_for(name: str, known: dict[str, tuple[int, int, int]] | None = None) -> tuple[int, int, int]:
    """A stable BGR colour per class name: the given one, else one derived from the name."""
    if known and name in known:
        return known[name]
    seed = sum((i + 1) * ord(c) for i, c in enumerate(name))
    hue = (seed * 47) % 180
    cv2 = _cv2()
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)
