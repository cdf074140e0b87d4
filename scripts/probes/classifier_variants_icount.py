"""arm64 instructions per crop of cheaper shapes of the Galaxy10 classifier (untrained: the count does
not depend on the weights), under the Pi userland: the shipped shape (classification.model.build_cnn:
four convolutions of 24, 48, 64 and 96 filters, 2x2 pooling between) and variants of its first block
(CNNConfig's first kernel, first_stride and first_pool).

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
    from classification.model import CNNConfig, build_cnn

    kernels = [first_kernel, *CNNConfig().kernel_sizes[1:]]
    return build_cnn(CNNConfig(kernel_sizes=kernels, first_stride=first_stride, first_pool=first_pool))


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
