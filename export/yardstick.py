"""The latency yardstick of the benchmark: a standard SSD MobileNet V2 300x300 (TF Object
Detection API layout: MobileNetV2 1.0 features at 19x19 and 10x10, four extra layers down to
1x1, 1x1 convolution box predictors as in its pipeline config, 3 anchors per location on the
first map and 6 on the others, 91 COCO classes), converted to
int8 with the same converter as our models. Random weights: it measures latency, nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COCO_CLASSES = 91
ANCHORS_PER_LOCATION = 6


def ssd_mobilenet_v2_300():
    import keras
    from keras import layers

    image = keras.Input((300, 300, 3), name="image")
    scaled = layers.Rescaling(1 / 127.5, offset=-1.0)(image)
    backbone = keras.applications.MobileNetV2(input_shape=(300, 300, 3), include_top=False, weights=None)
    features = keras.Model(
        backbone.input,
        [backbone.get_layer("block_13_expand_relu").output, backbone.get_layer("out_relu").output],
    )(scaled)
    maps = list(features)
    x = maps[-1]
    for level, channels in enumerate((512, 256, 256, 128)):
        x = layers.Conv2D(channels // 2, 1, activation="relu6", name=f"extra{level}_1x1")(x)
        x = layers.Conv2D(
            channels, 3, strides=2, padding="same", activation="relu6", name=f"extra{level}_3x3"
        )(x)
        maps.append(x)
    boxes, scores = [], []
    for level, feature in enumerate(maps):
        anchors = 3 if level == 0 else ANCHORS_PER_LOCATION  # reduce_boxes_in_lowest_layer
        box = layers.Conv2D(anchors * 4, 1, name=f"box{level}")(feature)
        score = layers.Conv2D(anchors * COCO_CLASSES, 1, name=f"class{level}")(feature)
        boxes.append(layers.Reshape((-1, 4))(box))
        scores.append(layers.Reshape((-1, COCO_CLASSES))(score))
    return keras.Model(
        image,
        {"boxes": layers.Concatenate(axis=1)(boxes), "scores": layers.Concatenate(axis=1)(scores)},
        name="ssd_mobilenet_v2_300",
    )


def build_ssd_mobilenet_v2(path: Path) -> Path:
    from export.tflite import convert

    model = ssd_mobilenet_v2_300()
    calibration = np.random.default_rng(0).uniform(0, 255, (16, 300, 300, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(convert(model, "int8", calibration, count=16))
    return path


if __name__ == "__main__":
    import sys

    from edge.bench import SSD_YARDSTICK, YARDSTICK_CACHE

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else YARDSTICK_CACHE / SSD_YARDSTICK
    print(f"wrote {build_ssd_mobilenet_v2(target)}")
