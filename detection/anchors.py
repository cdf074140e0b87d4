"""SSD anchors whose sizes and aspect ratios come from the training boxes.

Written here rather than taken from KerasHub's AnchorGenerator: KerasHub is not in our
stack, and its generator takes fixed scales, while galaxies span a few pixels to most of a
tile, so the sizes per feature level are chosen from the box statistics. The anchor layout
(cy, cx, h, w normalised to the input, level by level, row-major, then anchor kind) is the
one the edge runtime decodes (edge/model_card.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_STRIDES = (8, 16, 32, 64)


@dataclass
class AnchorSpec:
    """Per feature level: stride in input pixels and the anchor sizes (sqrt of area, pixels);
    the same aspect ratios (h / w) at every level."""

    input_size: int = 320
    strides: tuple[int, ...] = DEFAULT_STRIDES
    sizes: list[list[float]] = field(default_factory=lambda: [[12, 17], [24, 34], [48, 68], [96, 160]])
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5)

    @property
    def per_location(self) -> int:
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def grid(self, level: int) -> int:
        return int(np.ceil(self.input_size / self.strides[level]))

    def count(self) -> int:
        return sum(self.grid(level) ** 2 for level in range(len(self.strides))) * self.per_location

    def to_dict(self) -> dict:
        values = asdict(self)
        values["strides"] = list(self.strides)
        values["aspect_ratios"] = list(self.aspect_ratios)
        return values

    @staticmethod
    def from_dict(values: dict) -> AnchorSpec:
        return AnchorSpec(
            input_size=int(values["input_size"]),
            strides=tuple(values["strides"]),
            sizes=[[float(s) for s in level] for level in values["sizes"]],
            aspect_ratios=tuple(values["aspect_ratios"]),
        )


def anchors_center_yxhw(spec: AnchorSpec, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(N, 4) anchors as cy, cx, h, w in [0, 1] of the input, in the model's output order.

    shape: (height, width) of a whole-frame input (the fully convolutional model exported at
    a camera's frame size); the feature maps are then ceil(side / stride) cells each way, as
    'same' padding gives, with anchors of the same pixel sizes."""
    height, width = shape if shape is not None else (spec.input_size, spec.input_size)
    rows = []
    for level, stride in enumerate(spec.strides):
        rows_count, columns_count = int(np.ceil(height / stride)), int(np.ceil(width / stride))
        cy, cx = np.meshgrid(
            (np.arange(rows_count) + 0.5) * stride / height,
            (np.arange(columns_count) + 0.5) * stride / width,
            indexing="ij",
        )
        kinds = []
        for size in spec.sizes[level]:
            for ratio in spec.aspect_ratios:
                kinds.append((size * np.sqrt(ratio) / height, size / np.sqrt(ratio) / width))
        level_anchors = np.zeros((rows_count, columns_count, len(kinds), 4), np.float32)
        level_anchors[..., 0] = cy[..., None]
        level_anchors[..., 1] = cx[..., None]
        for k, (h, w) in enumerate(kinds):
            level_anchors[:, :, k, 2] = h
            level_anchors[:, :, k, 3] = w
        rows.append(level_anchors.reshape(-1, 4))
    return np.concatenate(rows)


def spec_from_boxes(
    widths: np.ndarray,
    heights: np.ndarray,
    input_size: int = 320,
    strides: tuple[int, ...] = DEFAULT_STRIDES,
    sizes_per_level: int = 2,
) -> AnchorSpec:
    """Anchor sizes spread geometrically over the 1st-99th percentile of the box sizes (in
    input pixels), split across the levels in order; aspect ratios 1 and the 85th percentile
    of the elongation both ways (edge-on galaxies), capped at 3."""
    widths, heights = np.asarray(widths, float), np.asarray(heights, float)
    if len(widths) == 0:
        raise ValueError("no boxes to derive anchors from")
    sizes = np.sqrt(np.clip(widths, 1, None) * np.clip(heights, 1, None))
    # The smallest anchor still needs a few pixels of overlap at the finest stride.
    low = max(float(np.percentile(sizes, 1)), strides[0] * 0.75)
    high = min(max(float(np.percentile(sizes, 99)), low * 4), input_size * 0.9)
    count = len(strides) * sizes_per_level
    ladder = np.geomspace(low, high, count)
    per_level = [
        [round(float(s), 2) for s in ladder[i * sizes_per_level : (i + 1) * sizes_per_level]]
        for i in range(len(strides))
    ]
    elongation = np.abs(np.log(np.clip(heights, 1, None) / np.clip(widths, 1, None)))
    ratio = float(np.clip(np.exp(np.percentile(elongation, 85)), 1.5, 3.0))
    return AnchorSpec(
        input_size=input_size,
        strides=tuple(strides),
        sizes=per_level,
        aspect_ratios=(1.0, round(ratio, 3), round(1 / ratio, 3)),
    )
