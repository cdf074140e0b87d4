"""SSDLite on a MobileNet backbone (Keras 3): feature maps at strides 8-64 (optionally 4-64),
depthwise-separable box and class heads, raw outputs (box deltas and class logits per anchor).

The model takes raw 0-255 RGB pixels. Its Rescaling to MobileNet's -1..1 stays in the int8 graph as a
MUL and an ADD over the input (26 M arm64 instructions on a 1280x720 frame): the offset cannot fold into
the first convolution, whose zero padding is in the rescaled range (docs/detector.md).
Outputs, in this order: "boxes" (B, anchors, 4) deltas dy, dx, dh, dw (divided by the box
variance) and "scores" (B, anchors, classes) logits for a sigmoid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from detection.anchors import AnchorSpec

# Where the backbones' feature maps of each stride are: expanded activations for MobileNetV2, as
# in the SSDLite paper; the blocks' outputs for MobileNetV3Small, skipping its last 1x1
# convolution (576 channels at stride 32), which the head's own separable block follows anyway
# (the shipped detector's int8 invoke: 0.195-0.236 of the SSD yardstick's in two runs, bench/bench_x86.md).
# Stride 4 is optional (`--strides 4,8,16,32,64`): anchors for galaxies of a few pixels.
BACKBONE_FEATURES = {
    "mobilenet_v2": {
        4: "block_3_expand_relu",
        8: "block_6_expand_relu",
        16: "block_13_expand_relu",
        32: "out_relu",
    },
    "mobilenet_v3_small": {
        4: "expanded_conv_project_bn",
        8: "expanded_conv_2_add",
        16: "expanded_conv_7_add",
        32: "expanded_conv_10_add",
    },
}
# A patchify stem (`DetectorConfig.stem`) replaces the backbone's layers up to this one, where
# the network reaches stride 8; the rest of the backbone is kept (and its trained weights).
PATCHIFY_CUT = {"mobilenet_v3_small": "expanded_conv_1_project_bn", "mobilenet_v2": "block_3_project_BN"}
BN_MOMENTUM = 0.9  # applications use 0.999: far too slow to settle when training from scratch
PRIOR_PROBABILITY = 0.01  # initial sigmoid score: focal-loss practice, keeps early training stable


@dataclass
class DetectorConfig:
    backbone: str = "mobilenet_v2"
    alpha: float = 0.35
    head_channels: int = 96
    labels: list[str] = field(default_factory=lambda: ["galaxy"])
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    box_variance: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    fpn: bool = False  # a top-down pathway: each level also sees the coarser levels' features
    # Expansion widths of pruned inverted-residual blocks, {block name: channels} (detection.prune).
    expansions: dict[str, int] = field(default_factory=dict)
    # "backbone": the backbone's own stem; "patchify": a cheaper stem reaching stride 8 (_patchify_stem).
    stem: str = "backbone"

    @property
    def input_size(self) -> int:
        return self.anchors.input_size

    def to_dict(self) -> dict:
        values = asdict(self)
        values["anchors"] = self.anchors.to_dict()
        values["box_variance"] = list(self.box_variance)
        return values

    @staticmethod
    def from_dict(values: dict) -> DetectorConfig:
        return DetectorConfig(
            backbone=values.get("backbone", "mobilenet_v2"),
            alpha=float(values.get("alpha", 0.35)),
            head_channels=int(values.get("head_channels", 96)),
            labels=list(values.get("labels", ["galaxy"])),
            anchors=AnchorSpec.from_dict(values["anchors"]),
            box_variance=tuple(values.get("box_variance", (0.1, 0.1, 0.2, 0.2))),
            fpn=bool(values.get("fpn", False)),
            expansions={str(k): int(v) for k, v in values.get("expansions", {}).items()},
            stem=str(values.get("stem", "backbone")),
        )


def downsampling_steps(config: DetectorConfig) -> list[tuple[int, int]]:
    """(kernel, stride) of each step by which the network halves (or quarters) its grid, from the
    input to its deepest level, for placing whole-frame anchors (detection.anchors). Every
    backbone step and extra level is an odd kernel at stride 2, padded as 'same' (the Keras
    applications' ZeroPadding2D(correct_pad) before a 'valid' convolution pads the same way), and
    any odd kernel centres its cells alike at stride 2; the patchify stem starts with 4x4 at 4."""
    halvings = max(config.anchors.strides).bit_length() - 1  # strides are powers of 2
    if config.stem == "patchify":
        return [(4, 4)] + [(3, 2)] * (halvings - 2)
    return [(3, 2)] * halvings


def _backbone(config: DetectorConfig, weights: str | None, shape: tuple[int, int, int]):
    import keras

    if config.backbone == "mobilenet_v2":
        return keras.applications.MobileNetV2(
            input_shape=shape, alpha=config.alpha, include_top=False, weights=weights
        )
    if config.backbone == "mobilenet_v3_small":
        backbone = keras.applications.MobileNetV3Small(
            input_shape=shape,
            alpha=config.alpha if config.alpha in (0.75, 1.0) else 0.75,
            include_top=False,
            weights=weights,
            include_preprocessing=False,
            minimalistic=True,  # no hard-swish or squeeze-excite: plain int8 ops for the Edge TPU
        )
        # Minimalistic MobileNetV3 uses unbounded ReLUs; bounded at 6 as in MobileNetV2, their
        # activations keep a fixed int8 range (unbounded, int8 cost 1.3-2.6 points of mAP@0.5 here).
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.ReLU) and layer.max_value is None:
                layer.max_value = 6.0
        return backbone
    raise ValueError(f"unknown backbone {config.backbone!r}")


def _patchify_stem(scaled, channels: int):
    """A cheap way to stride 8, replacing MobileNet's stem and first blocks (on arm64 those cost 44 %
    of the shipped detector's instructions at 23 % of its multiply-accumulates:
    scripts/probes/stage_icount.py): a 4x4 stride-4 convolution on non-overlapping patches (as
    ConvNeXt's and ViT's stems, one well-shaped matrix product instead of a 3-channel 3x3 conv at
    half resolution), a depthwise stride-2 step, then an inverted residual's expand, depthwise and
    linear projection to the cut's channels, so the kept blocks see a feature of the same shape.
    "same" padding keeps the grids at ceil(side / stride), as the anchors expect, for whole frames
    whose sides are not multiples of 4 (on multiples it pads nothing)."""
    from keras import layers

    x = layers.Conv2D(24, 4, strides=4, padding="same", use_bias=False, name="stem_patch")(scaled)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_patch_bn")(x)
    x = layers.ReLU(6.0, name="stem_patch_relu")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="stem_down_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_down_dw_bn")(x)
    x = layers.ReLU(6.0, name="stem_down_dw_relu")(x)
    x = layers.Conv2D(3 * 24, 1, use_bias=False, name="stem_expand")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_expand_bn")(x)
    x = layers.ReLU(6.0, name="stem_expand_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="stem_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_dw_bn")(x)
    x = layers.ReLU(6.0, name="stem_dw_relu")(x)
    x = layers.Conv2D(channels, 1, use_bias=False, name="stem_project")(x)
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_project_bn")(x)


def _separable(x, channels: int, stride: int, name: str):
    import keras
    from keras import layers

    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_pw_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def _top_down(features: list) -> list:
    """FPN's top-down pathway (Lin et al. 2017) on SSDLite's levels, coarsest first: a level adds
    the next coarser one (already fused), enlarged to its grid (bilinear, 2x, cropped)
    and projected to its channels by a 1x1 convolution. The fine levels, tapped early in the
    backbone, then see deep features too: what galaxies of a few pixels need. The projections
    start at zero, so a detector given this pathway (--fpn --from M) first computes what M did."""
    import keras
    from keras import layers

    fused = list(features)
    for level in range(len(fused) - 2, -1, -1):
        height, width, channels = fused[level].shape[1:]
        # UpSampling2D, not the Resizing preprocessing layer: with it, the model's eager outputs
        # differed from predict()'s here (Keras 3.15, TensorFlow backend). Bilinear: its nearest
        # mode converts to TFLite TILE ops, which the Edge TPU lacks; bilinear is RESIZE_BILINEAR.
        coarser = layers.UpSampling2D(2, interpolation="bilinear", name=f"fpn{level}_up")(fused[level + 1])
        # Grids are ceil(side / stride): twice the coarser one can exceed this one by a row or column.
        extra_rows, extra_columns = coarser.shape[1] - height, coarser.shape[2] - width
        if extra_rows or extra_columns:
            coarser = layers.Cropping2D(((0, extra_rows), (0, extra_columns)), name=f"fpn{level}_crop")(
                coarser
            )
        projected = layers.Conv2D(
            channels, 1, kernel_initializer=keras.initializers.Zeros(), name=f"fpn{level}_project"
        )(coarser)
        fused[level] = layers.Add(name=f"fpn{level}_add")([fused[level], projected])
    return fused


def build_detector(
    config: DetectorConfig, weights: str | None = None, frame_size: tuple[int, int] | None = None
):
    """The SSDLite Keras model. weights: None (from scratch) or a local ImageNet weights file
    for the backbone (nothing is downloaded). frame_size: (height, width) to build the same
    fully convolutional network for whole frames of that size (its weights are the square
    model's, copied by the caller)."""
    import keras
    import numpy as np
    from keras import layers

    spec = config.anchors
    height, width = frame_size or (config.input_size, config.input_size)
    image = keras.Input((height, width, 3), name="image")
    scaled = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(image)
    backbone = _backbone(config, weights, (height, width, 3))
    if config.expansions:
        from detection.prune import narrow_backbone

        backbone = narrow_backbone(backbone, config.expansions)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    taps = BACKBONE_FEATURES[config.backbone]
    tapped = [stride for stride in spec.strides if stride in taps]
    if not tapped or tapped != list(spec.strides[: len(tapped)]):
        raise ValueError(
            f"strides {list(spec.strides)}: the backbone gives strides {sorted(taps)}, then extras"
        )
    tap_outputs = [backbone.get_layer(taps[stride]).output for stride in tapped]
    if config.stem == "patchify":
        if spec.strides[0] < 8:
            raise ValueError(f"strides {list(spec.strides)}: the patchify stem starts at stride 8")
        cut = backbone.get_layer(PATCHIFY_CUT[config.backbone]).output
        feature_model = keras.Model(cut, tap_outputs, name="backbone")
        features = feature_model(_patchify_stem(scaled, cut.shape[-1]))
    elif config.stem == "backbone":
        features = keras.Model(backbone.input, tap_outputs, name="backbone")(scaled)
    else:
        raise ValueError(f"unknown stem {config.stem!r}")
    features = list(features) if isinstance(features, list | tuple) else [features]
    # Extra levels beyond stride 32: SSDLite's 1x1 squeeze + depthwise stride-2 blocks.
    while len(features) < len(spec.strides):
        level = len(features)
        x = layers.Conv2D(config.head_channels, 1, use_bias=False, name=f"extra{level}_squeeze")(features[-1])
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"extra{level}_squeeze_bn")(x)
        x = layers.ReLU(6.0, name=f"extra{level}_squeeze_relu")(x)
        features.append(_separable(x, config.head_channels * 2, 2, f"extra{level}"))
    if config.fpn:
        features = _top_down(features)
    per_location = spec.per_location
    classes = len(config.labels)
    bias = float(-np.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
    boxes, scores = [], []
    for level, feature in enumerate(features):
        stride = spec.strides[level]
        expected = (int(np.ceil(height / stride)), int(np.ceil(width / stride)))
        if tuple(feature.shape[1:3]) != expected:
            raise ValueError(f"level {level}: feature map {feature.shape[1:3]} != anchor grid {expected}")
        x = _separable(feature, config.head_channels, 1, f"head{level}")
        box = layers.Conv2D(per_location * 4, 1, name=f"head{level}_boxes")(x)
        score = layers.Conv2D(
            per_location * classes,
            1,
            bias_initializer=keras.initializers.Constant(bias),
            name=f"head{level}_scores",
        )(x)
        boxes.append(layers.Reshape((-1, 4), name=f"head{level}_boxes_flat")(box))
        scores.append(layers.Reshape((-1, classes), name=f"head{level}_scores_flat")(score))
    outputs = {
        "boxes": layers.Concatenate(axis=1, name="boxes")(boxes),
        "scores": layers.Concatenate(axis=1, name="scores")(scores),
    }
    return keras.Model(image, outputs, name=f"ssdlite_{config.backbone}_{config.alpha:g}")


def transfer_weights(source, source_config: DetectorConfig, target, target_config: DetectorConfig) -> int:
    """Copy a trained detector's weights into one with other feature levels (say, a stride-4
    level added): the backbone layer by layer, each head and extra block to the level of the same
    stride. Layers whose shapes differ (other anchor counts) keep their initial weights. Returns
    how many layers were copied."""

    def level_names(config: DetectorConfig) -> dict[int, int]:
        return {stride: level for level, stride in enumerate(config.anchors.strides)}

    source_levels, target_levels = level_names(source_config), level_names(target_config)
    renames = {}
    for stride, level in target_levels.items():
        if stride in source_levels:
            for prefix in ("head", "extra"):
                renames[f"{prefix}{level}_"] = f"{prefix}{source_levels[stride]}_"
    source_backbone = source.get_layer("backbone")
    backbone_layers = {layer.name: layer for layer in source_backbone.layers}
    copied = 0
    for model, lookup in ((target.get_layer("backbone"), backbone_layers), (target, None)):
        for layer in model.layers:
            if not layer.weights or layer.name == "backbone":
                continue
            if lookup is not None:
                match = lookup.get(layer.name)
            else:
                prefix = next((p for p in renames if layer.name.startswith(p)), None)
                if prefix is None:
                    continue
                try:
                    match = source.get_layer(renames[prefix] + layer.name[len(prefix) :])
                except ValueError:
                    continue
            if match is None:
                continue
            weights = match.get_weights()
            if [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
                layer.set_weights(weights)
                copied += 1
    return copied


def relabel_detector(source, source_config: DetectorConfig, labels: Sequence[str]):
    """A detector of other labels (say galaxy and star, or a user's own) starting from `source`: the
    backbone, the box heads and the score channels of every label the two share keep source's
    weights, so a shared label scores exactly as before until training moves it; new labels start
    at the prior. Returns (model, config). Written by hand: Keras has no notion of a detector's
    per-anchor score channels."""
    config = dataclasses.replace(source_config, labels=list(labels))
    target = build_detector(config)
    transfer_weights(source, source_config, target, config)
    old, new = list(source_config.labels), list(labels)
    shared = [(old.index(name), new.index(name)) for name in new if name in old]
    per_location = config.anchors.per_location
    for level in range(len(config.anchors.strides)):
        kernel, bias = source.get_layer(f"head{level}_scores").get_weights()
        layer = target.get_layer(f"head{level}_scores")
        new_kernel, new_bias = layer.get_weights()
        # The score map holds per_location anchors x labels channels, label fastest.
        for anchor in range(per_location):
            for was, now in shared:
                new_kernel[..., anchor * len(new) + now] = kernel[..., anchor * len(old) + was]
                new_bias[anchor * len(new) + now] = bias[anchor * len(old) + was]
        layer.set_weights([new_kernel, new_bias])
    return target, config
