"""The JSON model card written beside every .tflite (format: edge/model_card.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path

from edge.model_card import FORMAT_VERSION, card_path
from galaxy_edge.schemes import get_scheme


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except OSError:
        return None
    return result.stdout.strip() or None


def tensor_facts(model_path: Path) -> dict:
    """Input and output shapes, dtypes and quantization, read from the model itself."""
    from edge.interpreter import load_interpreter

    interpreter = load_interpreter(model_path)

    def describe(detail: dict) -> dict:
        scale, zero_point = detail["quantization"]
        return {
            "name": detail["name"],
            "shape": [int(v) for v in detail["shape"]],
            "dtype": detail["dtype"].__name__,
            "quantization": {"scale": float(scale), "zero_point": int(zero_point)},
        }

    return {
        "inputs": [describe(d) for d in interpreter.get_input_details()],
        "outputs": [describe(d) for d in interpreter.get_output_details()],
    }


def save_card(model_path: Path, card: dict, extra: dict | None = None) -> Path:
    """Add what every card carries (file size and hash, git commit, date) and write it beside the model."""
    data = Path(model_path).read_bytes()
    card = {
        **card,
        "file": {
            "name": Path(model_path).name,
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    path = card_path(model_path)
    path.write_text(json.dumps(card, indent=1))
    return path


def write_classifier_card(
    model_path: Path | str,
    scheme: str,
    training: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Card for a Galaxy10 classifier that takes raw RGB pixels and outputs probabilities."""
    model_path = Path(model_path)
    classes = get_scheme(scheme)
    facts = tensor_facts(model_path)
    output = facts["outputs"][0]
    card = {
        "format_version": FORMAT_VERSION,
        "task": "classifier",
        "name": model_path.stem,
        "scheme": scheme,
        "labels": list(classes.names),
        "titles": list(classes.titles),
        "colors_rgb": [list(c) for c in classes.colors_rgb],
        "spiral_classes": list(classes.spiral_classes),
        "input": {
            "color_order": "RGB",
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "resize": "stretch",
            "note": "raw 0-255 pixels; the model's rescaling is folded into the input quantization",
            **facts["inputs"][0],
        },
        "output": "probabilities",
        "outputs": facts["outputs"],
        "quantization": {"step": output["quantization"]["scale"]},
        "training": training or {},
        "metrics": metrics or {},
    }
    return save_card(model_path, card, extra)
