"""Parity of an int8 model with its float original, and Edge TPU readiness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from galaxy_edge.schemes import get_scheme

# Ops the Edge TPU compiler maps to the TPU (Coral's "supported operations" table).
EDGETPU_OPS = {
    "ADD",
    "AVERAGE_POOL_2D",
    "CONCATENATION",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "DEQUANTIZE",
    "EXPAND_DIMS",
    "FULLY_CONNECTED",
    "GATHER",
    "HARD_SWISH",
    "L2_NORMALIZATION",
    "LOGISTIC",
    "MAX_POOL_2D",
    "MAXIMUM",
    "MEAN",
    "MINIMUM",
    "MUL",
    "PACK",
    "PAD",
    "PRELU",
    "QUANTIZE",
    "REDUCE_MAX",
    "REDUCE_MIN",
    "RELU",
    "RELU6",
    "RELU_N1_TO_1",
    "RESHAPE",
    "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR",
    "RSQRT",
    "SLICE",
    "SOFTMAX",
    "SPACE_TO_DEPTH",
    "SPLIT",
    "SQUARED_DIFFERENCE",
    "SQUEEZE",
    "STRIDED_SLICE",
    "SUB",
    "SUM",
    "TANH",
    "TRANSPOSE",
    "TRANSPOSE_CONV",
    "UNPACK",
}
INTEGER_TYPES = {"int8", "uint8", "int32"}  # int32: biases and shape tensors


def classifier_parity(
    keras_model, tflite_path: Path, images: np.ndarray, labels: np.ndarray, scheme: str
) -> dict:
    """Float Keras vs the int8 model run through the edge runtime (its real preprocessing)."""
    from classification.evaluate import expected_calibration_error
    from edge.models import Classifier

    float_probabilities = keras_model.predict(images, batch_size=256, verbose=0)
    runtime = Classifier(tflite_path)
    bgr = np.ascontiguousarray(images[..., ::-1])
    int8_probabilities = runtime.classify(list(bgr))
    float_top, int8_top = float_probabilities.argmax(1), int8_probabilities.argmax(1)
    names = get_scheme(scheme).names
    changes = {}
    for index, name in enumerate(names):
        members = labels == index
        if members.any():
            changes[name] = {
                "float_recall": float((float_top[members] == index).mean()),
                "int8_recall": float((int8_top[members] == index).mean()),
                "count": int(members.sum()),
            }
    return {
        "count": len(labels),
        "top1_agreement": float((float_top == int8_top).mean()),
        "float_accuracy": float((float_top == labels).mean()),
        "int8_accuracy": float((int8_top == labels).mean()),
        "accuracy_drop_points": float(100 * ((float_top == labels).mean() - (int8_top == labels).mean())),
        "float_ece": expected_calibration_error(float_probabilities, labels)[0],
        "int8_ece": expected_calibration_error(int8_probabilities, labels)[0],
        "per_class": changes,
        "max_probability_difference": float(np.abs(float_probabilities - int8_probabilities).max()),
    }


def edgetpu_readiness(tflite_path: Path) -> dict:
    """Every op and tensor type; ready when all ops are Edge TPU int8 builtins, every tensor is
    integer, shapes are static, and there is one subgraph. Names each offending op."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default XNNPACK delegate, which would hide the model's own ops.
    interpreter = Interpreter(
        model_path=str(tflite_path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # the public API has no op list
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    problems = []
    op_names = []
    for op in ops:
        op_names.append(op["op_name"])
        if op["op_name"] not in EDGETPU_OPS:
            problems.append(f"op {op['index']} {op['op_name']}: not supported by the Edge TPU")
        for index in list(op["inputs"]) + list(op["outputs"]):
            if index < 0 or index not in tensors:
                continue
            dtype = tensors[index]["dtype"].__name__
            if dtype not in INTEGER_TYPES:
                problems.append(
                    f"op {op['index']} {op['op_name']}: tensor '{tensors[index]['name']}' is {dtype}"
                )
    for detail in interpreter.get_input_details() + interpreter.get_output_details():
        if -1 in list(detail.get("shape_signature", detail["shape"])):
            problems.append(
                f"tensor '{detail['name']}' has a dynamic shape {list(detail['shape_signature'])}"
            )
    subgraphs = int(interpreter._interpreter.NumSubgraphs())  # not in the public API either
    if subgraphs != 1:
        problems.append(f"{subgraphs} subgraphs: the Edge TPU compiles one")
    return {
        "ready": not problems,
        "ops": sorted(set(op_names)),
        "op_count": len(op_names),
        "problems": problems,
        "subgraphs": subgraphs,
        "compile_command": f"edgetpu_compiler --show_operations --out_dir {tflite_path.parent} {tflite_path}",
    }


def write_report(report: dict, json_path: Path) -> tuple[Path, Path]:
    """The report as JSON and as a Markdown table beside it."""
    json_path.write_text(json.dumps(report, indent=1))
    lines = [f"# Export report: {report.get('model', '')}", ""]
    parity = report.get("parity")
    if parity and "float32" in parity:  # detector
        columns = ["float32"] + [k for k in parity if k not in ("float32", "frames")]
        lines += ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        titles = {"map50": "mAP@0.5", "map": "mAP@0.5:0.95", "ar10": "AR@10", "ar100": "AR@100"}
        for key, title in titles.items():
            lines.append(f"| {title} | " + " | ".join(f"{parity[c][key]:.4f}" for c in columns) + " |")
        lines += ["", f"On {parity['frames']} frames, through the edge runtime (tiling, decoding, NMS).", ""]
    elif parity:
        lines += [
            "| | float32 | int8 |",
            "|---|---|---|",
            f"| accuracy | {parity['float_accuracy']:.4f} | {parity['int8_accuracy']:.4f} |",
            f"| expected calibration error | {parity['float_ece']:.4f} | {parity['int8_ece']:.4f} |",
            "",
            f"Top-1 agreement {parity['top1_agreement']:.4f} on {parity['count']} images; accuracy drop "
            f"{parity['accuracy_drop_points']:.2f} points.",
            "",
        ]
        if parity.get("per_class"):
            lines += ["| class | images | float32 recall | int8 recall | change |", "|---|---|---|---|---|"]
            for name, row in parity["per_class"].items():
                change = 100 * (row["int8_recall"] - row["float_recall"])
                lines.append(
                    f"| {name} | {row['count']} | {row['float_recall']:.4f} | {row['int8_recall']:.4f} | "
                    f"{change:+.2f} points |"
                )
            lines.append("")
    readiness = report.get("edgetpu")
    if readiness:
        lines += [
            f"Edge TPU ready: {'yes' if readiness['ready'] else 'no'} ({readiness['op_count']} ops: "
            f"{', '.join(readiness['ops'])})."
        ]
        lines += [f"- {p}" for p in readiness["problems"]]
        lines += [
            "",
            f"Compile on a machine with the Edge TPU compiler: `{readiness['compile_command']}`",
            "",
        ]
    markdown = json_path.with_suffix(".md")
    markdown.write_text("\n".join(lines))
    return json_path, markdown
