"""Multiply-accumulates of an int8 (or float) TFLite model by the grid its layers write: where a
detector's arithmetic goes, stride by stride (docs/detector.md, "A twin of the finer levels").

    PYTHONPATH=. python scripts/probes/macs_by_level.py MODEL.tflite [MODEL.tflite ...]

Counts CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED from the tensors' shapes (the other ops do no
multiply-accumulates worth counting); TensorFlow's interpreter reads the graph.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np


def macs_by_grid(path: Path) -> dict[tuple[int, int], float]:
    """{(rows, columns) of the output: multiply-accumulates} over the model's weighted layers."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(str(path))
    interpreter.allocate_tensors()
    shapes = {t["index"]: t["shape"] for t in interpreter.get_tensor_details()}
    grids: dict[tuple[int, int], float] = defaultdict(float)
    for op in interpreter._get_ops_details():  # the public API has no per-op view
        out, weights = shapes[op["outputs"][0]], shapes[op["inputs"][1]] if len(op["inputs"]) > 1 else None
        if op["op_name"] == "CONV_2D":
            grids[(int(out[1]), int(out[2]))] += float(np.prod(out) * np.prod(weights[1:]))
        elif op["op_name"] == "DEPTHWISE_CONV_2D":
            grids[(int(out[1]), int(out[2]))] += float(np.prod(out) * weights[1] * weights[2])
        elif op["op_name"] == "FULLY_CONNECTED":
            grids[(1, 1)] += float(np.prod(weights) * out[0])
    return dict(grids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    for path in parser.parse_args().models:
        grids = macs_by_grid(path)
        total = sum(grids.values())
        print(f"{path}: {total / 1e6:.1f} M multiply-accumulates")
        for (rows, columns), macs in sorted(grids.items(), key=lambda item: -item[0][0]):
            print(f"  {rows}x{columns}: {macs / 1e6:.1f} M ({macs / total:.1%})")


if __name__ == "__main__":
    main()
