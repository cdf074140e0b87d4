"""Where two interpreters' outputs of one model part ways: every intermediate tensor of one invoke,
saved by each interpreter, then compared op by op.

    python -m tests.layer_outputs dump MODEL KERNELS OUT.npz   # in each interpreter (x86, Pi userland)
    python -m tests.layer_outputs compare A.npz B.npz

The input is the top-left corner of the bundled Hubble sample at the model's input size. `compare`
prints the ops whose output differs although their inputs are identical (where the kernels disagree),
and the largest difference of each model output, in quantization steps for int8 models. An op may
reuse an input's buffer in place, which leaves that input's saved copy stale: a difference that the
next op does not inherit is such a copy, not a kernel difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

import edge.interpreter as runtime

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "hubble_udf_crop_1280x720.jpg"


def dump(model: str, kernels: str, out: str) -> None:
    module = runtime.interpreter_module()
    options = (
        {"experimental_op_resolver_type": runtime._builtin_resolver(module)} if kernels == "builtin" else {}
    )
    interpreter = module.Interpreter(model_path=model, experimental_preserve_all_tensors=True, **options)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    _, height, width, _ = detail["shape"]
    rgb = cv2.imread(str(SAMPLE))[:height, :width, ::-1]
    if detail["dtype"] == np.int8:
        tensor = (rgb.astype(np.int16) - 128).astype(np.int8)
    else:
        tensor = rgb.astype(np.float32)
    interpreter.set_tensor(detail["index"], tensor[None])
    interpreter.invoke()
    tensors = {}
    for tensor_detail in interpreter.get_tensor_details():
        try:
            tensors[str(tensor_detail["index"])] = interpreter.get_tensor(tensor_detail["index"])
        except ValueError:  # tensors without data (optional inputs)
            continue
    ops = [
        {
            "op": o["op_name"],
            "inputs": [int(i) for i in o["inputs"]],
            "outputs": [int(i) for i in o["outputs"]],
        }
        for o in interpreter._get_ops_details()
    ]
    outputs = [int(d["index"]) for d in interpreter.get_output_details()]
    graph = json.dumps({"ops": ops, "outputs": outputs, "runtime": runtime.runtime_name(module)})
    np.savez(out, __graph__=np.array(graph), **tensors)


def compare(path_a: str, path_b: str) -> None:
    a, b = np.load(path_a), np.load(path_b)
    graph = json.loads(str(a["__graph__"]))
    print(f"{path_a} ({graph['runtime']}) against {path_b} ({json.loads(str(b['__graph__']))['runtime']})")

    def difference(index: int) -> np.ndarray | None:
        key = str(index)
        if key not in a.files or key not in b.files:
            return None
        return np.abs(a[key].astype(np.float64) - b[key].astype(np.float64))

    def differs(index: int) -> bool:
        d = difference(index)
        return d is not None and d.max() > 0

    consumers: dict[int, list[dict]] = {}
    for op in graph["ops"]:
        for index in op["inputs"]:
            consumers.setdefault(index, []).append(op)
    for number, op in enumerate(graph["ops"]):
        if any(differs(i) for i in op["inputs"] if i >= 0):
            continue
        for index in op["outputs"]:
            inherited = index in graph["outputs"] or any(
                differs(j) for consumer in consumers.get(index, []) for j in consumer["outputs"]
            )
            if differs(index) and inherited:
                d = difference(index)
                print(
                    f"op {number} {op['op']}: identical inputs, output differs by up to {d.max():g} "
                    f"in {(d > 0).mean():.2%} of its values"
                )
    for index in graph["outputs"]:
        d = difference(index)
        print(f"output tensor {index} {a[str(index)].shape}: largest difference {d.max():g}")


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(*sys.argv[2:5])
    else:
        compare(*sys.argv[2:4])
