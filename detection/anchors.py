"""SSD anchors whose sizes and aspect ratios come from the training boxes.

Written here rather than taken from KerasHub's AnchorGenerator: KerasHub is not in our
stack, and its generator takes fixed scales, while galaxies span a few pixels to most of a
tile, so the sizes per feature level are chosen from the box statistics. The anchor layout
(cy, cx, h, w normalised to the input, level by level, row-major, then anchor kind) is the
one the edge runtime decodes (edge/model_card.py).
"""

from __future__ import annotations

from collections.abc import Sequence
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


def first_cell_centres(side: int, steps: Sequence[tuple[int, int]]) -> dict[int, float]:
    """{cumulative stride: centre of the first cell (input pixels, 0 = the first pixel's left
    edge)} after each (kernel, stride) step of 'same' padding, which pads side // 2 of its total
    before and the rest after, so the centres depend on whether each level's side is even."""
    centre, step, centres = 0.5, 1, {}
    for kernel, stride in steps:
        cells = -(-side // stride)
        before = max((cells - 1) * stride + kernel - side, 0) // 2
        centre += ((kernel - 1) / 2 - before) * step
        step, side = step * stride, cells
        centres[step] = centre
    return centres


def anchor_grid(
    spec: AnchorSpec,
    shape: tuple[int, int] | None = None,
    steps: Sequence[tuple[int, int]] | None = None,
) -> dict:
    """The anchors in the model card's compact form (edge.model_card.anchors_from_grid reads it):
    per level its stride, cells, first cell's centre and anchor sizes, in input pixels.

    shape: (height, width) of a whole-frame input (the fully convolutional model exported at
    a camera's frame size); the feature maps are then ceil(side / stride) cells each way, as
    'same' padding gives, with anchors of the same pixel sizes. steps: the network's
    downsampling (kernel, stride) steps (detection.model.downsampling_steps). Where a level's
    cells sit elsewhere on the frame's sides than on the training crops' (a side that is not a
    multiple of the deepest stride pads differently), its anchors move with them: the network
    learned its box offsets from where its cells see, so 720 rows put the stride-32 anchors 16
    pixels and the stride-64 ones 48 pixels higher (without it the whole-frame detector lost 0.1
    of mAP@0.5 on 1280x720 frames; docs/detector.md, Whole-frame export)."""
    height, width = shape if shape is not None else (spec.input_size, spec.input_size)
    shift_y, shift_x = {}, {}
    if shape is not None and steps is not None:
        trained = first_cell_centres(spec.input_size, steps)
        rows_at, columns_at = first_cell_centres(height, steps), first_cell_centres(width, steps)
        shift_y = {s: rows_at[s] - trained[s] for s in trained}
        shift_x = {s: columns_at[s] - trained[s] for s in trained}
    levels = []
    for level, stride in enumerate(spec.strides):
        sizes_hw = [
            [float(size * np.sqrt(ratio)), float(size / np.sqrt(ratio))]
            for size in spec.sizes[level]
            for ratio in spec.aspect_ratios
        ]
        levels.append(
            {
                "stride": stride,
                "rows": int(np.ceil(height / stride)),
                "columns": int(np.ceil(width / stride)),
                "first_centre_yx": [
                    stride / 2 + shift_y.get(stride, 0.0),
                    stride / 2 + shift_x.get(stride, 0.0),
                ],
                "sizes_hw": sizes_hw,
            }
        )
    return {"height": height, "width": width, "levels": levels}


def anchors_center_yxhw(
    spec: AnchorSpec,
    shape: tuple[int, int] | None = None,
    steps: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """(N, 4) float32 anchors as cy, cx, h, w in [0, 1] of the input, in the model's output order
    (the arguments as for anchor_grid)."""
    from edge.model_card import anchors_from_grid

    return np.asarray(anchors_from_grid(anchor_grid(spec, shape, steps)), np.float32).reshape(-1, 4)


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
