"""arm64 instructions per crop of cheaper shapes of the Galaxy10 classifier (untrained: the count does
not depend on the weights), under the Pi userland: the shipped shape (classification.model.build_cnn:
four convolutions of 24, 48, 64 and 96 filters, 2x2 pooling between) and variants of its first block.

    PYTHONPATH=. python scripts/probes/classifier_variants_icount.py OUT

About 3 minutes here. OUT keeps the int8 files. A variant ships only after training and the classifier's
checks (the real GZ2 spiral ROC-AUC stands at 0.901 against issue 9's 0.90).
"""

from __future__ import annotations

import numpy as np

from scripts.probes.input_scaling import instructions_per_invoke, probe_folder

# first kernel, first stride, the first pooling kept
VARIANTS = {
    "shipped (5x5, stride 1, pool)": (5, 1, True),
    "3x3 first convolution": (3, 1, True),
    "5x5 in 2-pixel steps, no first pooling": (5, 2, False),
    "3x3 in 2-pixel steps, no first pooling": (3, 2, False),
    "3x3 in 2-pixel steps, first pooling kept": (3, 2, True),
}


def build(first_kernel: int, first_stride: int, first_pool: bool):
    import keras
    from keras import layers

    from classification.model import INPUT_SCALE, CNNConfig

    config = CNNConfig()
    image = keras.Input((config.input_size, config.input_size, 3))
    x = layers.Rescaling(INPUT_SCALE)(image)
    kernels = [first_kernel, *config.kernel_sizes[1:]]
    for i, (filters, kernel) in enumerate(zip(config.filters, kernels, strict=True)):
        stride = first_stride if i == 0 else 1
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        if i < len(config.filters) - 1 and (i > 0 or first_pool):
            x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(config.dense_units, activation="relu")(x)
    return keras.Model(image, layers.Softmax()(layers.Dense(config.num_classes)(x)))


def main() -> None:
    from export.tflite import convert

    out, script = probe_folder(__doc__.split("\n\n")[0])
    crops = np.random.default_rng(0).integers(0, 256, (16, 69, 69, 3), dtype=np.uint8)
    for index, (name, shape) in enumerate(VARIANTS.items()):
        path = out / f"classifier_variant{index}_int8.tflite"
        path.write_bytes(convert(build(*shape), "int8", crops, len(crops)))
        print(f"{name}: {instructions_per_invoke(path, script) / 1e6:.1f} M per crop", flush=True)


if __name__ == "__main__":
    main()
