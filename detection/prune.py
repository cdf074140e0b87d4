"""Structured pruning of a trained detector's inverted-residual expansions (MobileNetV2 and V3).

Each inverted-residual block widens its input with a 1x1 "expand" convolution, filters every
channel with a depthwise convolution and narrows it again with a 1x1 "project" convolution. An
expansion channel is private to its block, so dropping it removes its slice of all three
convolutions and nothing else changes shape: most of a MobileNet's multiply-accumulates are in
these slices. Channels are ranked by how much they move the block's output on real inputs (the
spread of the channel's activation times the norm of its projection weights, the first-order
criterion of Molchanov et al. 2017 without gradients), and the mean of what a dropped channel
contributed is folded into the projection's batch normalization, so the pruned network starts
close to the trained one. Fine-tuning then recovers the rest.

Written by hand: Keras has no structured pruning (the TensorFlow Model Optimization Toolkit only
zeroes weights, which keeps the tensors' shapes and so the instructions) and keras.applications
builds every block of one width multiplier.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

# The layers of one block share a prefix: MobileNetV3's "expanded_conv_4_expand",
# "..._expand_bn", "..._depthwise", "..._project_bn"; MobileNetV2's "block_4_expand", "..._BN".
BLOCK_PREFIX = re.compile(r"^(expanded_conv_\d+|block_\d+)_")
CHANNEL_MULTIPLE = 8  # kept widths are multiples of 8: int8 kernels vectorize over 8 or 16 channels


def _block_of(layer_name: str) -> str | None:
    match = BLOCK_PREFIX.match(layer_name)
    return match.group(1) if match else None


def expansion_widths(backbone) -> dict[str, int]:
    """{block: expansion channels} for every block of `backbone` that has an expand convolution."""
    return {
        layer.name[: -len("_expand")]: int(layer.filters)
        for layer in backbone.layers
        if layer.name.endswith("_expand") and hasattr(layer, "filters")
    }


def narrow_backbone(backbone, expansions: dict[str, int]):
    """A copy of `backbone` (freshly initialized) whose blocks named in `expansions` expand to that
    many channels; the depthwise and project layers follow from the shapes."""
    import keras

    widths = expansion_widths(backbone)
    unknown = sorted(set(expansions) - set(widths))
    if unknown:
        raise ValueError(f"blocks {unknown} have no expand convolution in {backbone.name}")

    def clone(layer):
        config = layer.get_config()
        block = layer.name[: -len("_expand")] if layer.name.endswith("_expand") else None
        if block in expansions:
            config["filters"] = int(expansions[block])
        return layer.__class__.from_config(config)

    return keras.models.clone_model(backbone, clone_function=clone)


def block_strides(backbone) -> dict[str, int]:
    """{block: the stride of its output} for every block with an expand convolution."""
    size = backbone.input.shape[1]
    return {
        block: round(size / backbone.get_layer(f"{block}_project").output.shape[1])
        for block in expansion_widths(backbone)
    }


def sample_tiles(frames, size: int, count: int = 64, seed: int = 0) -> np.ndarray:
    """`count` native-scale size x size crops (raw RGB) from `frames` (detection.data.Frame), at
    random places drawn from `seed`: the inputs on which channels are ranked."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(count):
        image = frames[int(rng.integers(len(frames)))].image
        height, width = image.shape[:2]
        if height < size or width < size:
            padded = np.zeros((max(height, size), max(width, size), 3), image.dtype)
            padded[:height, :width] = image
            image, height, width = padded, *padded.shape[:2]
        top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        tiles.append(image[top : top + size, left : left + size])
    return np.stack(tiles)


def _project_layers(backbone) -> dict[str, object]:
    return {block: backbone.get_layer(f"{block}_project") for block in expansion_widths(backbone)}


def expansion_statistics(backbone, images: np.ndarray, batch_size: int = 16) -> dict[str, dict]:
    """Per block: each expansion channel's mean activation (the project convolution's input) over
    `images` (already scaled as the backbone expects) and its importance, the activation's standard
    deviation times the norm of the channel's projection weights."""
    import keras

    projects = _project_layers(backbone)
    probe = keras.Model(backbone.input, [layer.input for layer in projects.values()])
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    count = 0
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start : start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        for block, activation in zip(projects, outputs, strict=True):
            values = np.asarray(activation, np.float64).reshape(-1, activation.shape[-1])
            sums[block] = sums.get(block, 0.0) + values.sum(axis=0)
            squares[block] = squares.get(block, 0.0) + (values**2).sum(axis=0)
        count += values.shape[0]
    statistics = {}
    for block, layer in projects.items():
        mean = sums[block] / count
        spread = np.sqrt(np.maximum(squares[block] / count - mean**2, 0.0))
        outgoing = np.linalg.norm(np.asarray(layer.kernel).reshape(len(mean), -1), axis=1)
        statistics[block] = {"mean": mean, "importance": spread * outgoing}
    return statistics


def kept_channels(importance: np.ndarray, keep_fraction: float) -> np.ndarray:
    """The most important channels, in their original order: keep_fraction of them, rounded to a
    multiple of CHANNEL_MULTIPLE (at least one multiple, at most all)."""
    total = len(importance)
    count = round(total * keep_fraction / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
    count = min(total, max(CHANNEL_MULTIPLE, count))
    return np.sort(np.argsort(-importance, kind="stable")[:count])


def _sliced(old: np.ndarray, new_shape: tuple, keep: np.ndarray, name: str) -> np.ndarray:
    differing = [axis for axis, (a, b) in enumerate(zip(old.shape, new_shape, strict=True)) if a != b]
    if not differing:
        return old
    if len(differing) > 1 or new_shape[differing[0]] != len(keep):
        raise ValueError(f"{name}: cannot map {old.shape} onto {new_shape}")
    return np.take(old, keep, axis=differing[0])


def prune_detector(model, config, images: np.ndarray, keep_fraction: float, min_stride: int = 1):
    """A copy of detector `model` (built from `config`) with `keep_fraction` of the expansion
    channels kept in every block whose output stride is at least `min_stride`, the most important
    channels on `images` (raw 0-255 pixels at the input size). Returns (model, config);
    config.expansions records the widths, so build_detector(config) makes the same network
    (whole-frame export, --from)."""
    from detection.model import build_detector

    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep fraction {keep_fraction}: give a number in (0, 1]")
    backbone = model.get_layer("backbone")
    scaled = images.astype(np.float32) / 127.5 - 1.0  # the detector's to_unit_range layer
    statistics = expansion_statistics(backbone, scaled)
    strides = block_strides(backbone)
    chosen = [block for block in statistics if strides[block] >= min_stride]
    keep = {block: kept_channels(statistics[block]["importance"], keep_fraction) for block in chosen}
    expansions = dict(config.expansions)
    expansions.update({block: len(channels) for block, channels in keep.items()})
    new_config = dataclasses.replace(config, expansions=expansions)
    pruned = build_detector(new_config)
    new_backbone = pruned.get_layer("backbone")
    for layer in new_backbone.layers:
        if not layer.weights:
            continue
        old_layer = backbone.get_layer(layer.name)
        block = _block_of(layer.name)
        weights = old_layer.get_weights()
        if block in keep:
            weights = [
                _sliced(w, tuple(n.shape), keep[block], layer.name)
                for w, n in zip(weights, layer.get_weights(), strict=True)
            ]
            if layer.name.startswith(f"{block}_project"):
                weights = _compensated(weights, old_layer, backbone, block, keep[block], statistics)
        layer.set_weights(weights)
    for layer in pruned.layers:
        if layer.weights and layer.name != "backbone":
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return pruned, new_config


def _compensated(weights, bn_layer, backbone, block: str, keep: np.ndarray, statistics) -> list:
    """The project batch normalization's moving mean shifted by the mean of what the dropped
    channels fed the projection (the projection has no bias), so its output is unchanged on
    average."""
    import keras

    if not isinstance(bn_layer, keras.layers.BatchNormalization):
        return weights
    kernel = np.asarray(backbone.get_layer(f"{block}_project").kernel)
    kernel = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
    dropped = np.setdiff1d(np.arange(kernel.shape[0]), keep)
    shift = statistics[block]["mean"][dropped] @ kernel[dropped]
    names = [v.name for v in bn_layer.weights]
    weights = list(weights)
    weights[names.index("moving_mean")] = weights[names.index("moving_mean")] - shift.astype(np.float32)
    return weights
