"""Export a box refiner (`train --box-refiner`): TFLite with a fixed batch (two inputs: patches and
priors; one output: the deltas), the runtime's settings in its card, and its name in its detector's
card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.card import save_card
from export.verifier import attach_companion, patch_model_card
from galaxy_edge.errors import GalaxyEdgeError

# Boxes per invoke: the runtime refines only the boxes it keeps (tens a frame), so a smaller batch
# than the verifier's 32 wastes less on padding.
BATCH = 16


def export_box_refiner(
    model_path: Path, out: Path, to: str, calibration_count: int, detector: Path | None = None
) -> dict:
    """Write out (.tflite) and its card, with the float/int8 parity on the training's validation boxes
    (their IoU with the galaxies' boxes before and after each model's refinement); with `detector`,
    name it in that detector's card."""
    import keras

    from detection.box_refiner import mean_iou_gain
    from edge.models import BoxRefiner
    from export.tflite import convert

    model_path = Path(model_path)
    summary = json.loads(model_path.with_suffix(".json").read_text())
    calibration = _boxes(model_path.parent / "calibration.npz")
    validation = _boxes(model_path.parent / "validation.npz")
    model = keras.models.load_model(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = max(1, calibration_count // BATCH)
    out.write_bytes(convert(model, to, [calibration["patches"], calibration["priors"]], count, batch=BATCH))
    config = summary["config"]
    card = {
        **patch_model_card(out, "box_refiner"),
        "refinement": {
            "context": config["context"],
            "max_side": config["max_side"],
            "delta_scale": config["delta_scale"],
        },
        "training": {k: v for k, v in summary.items() if k != "history"},
        "calibration": {"count": count * BATCH, "source": "training boxes (calibration.npz)"},
    }
    save_card(out, card)
    # Parity: the exported refiner against the Keras model on the validation boxes (held out from
    # training and calibration).
    exported = BoxRefiner(out).patch_outputs(validation["patches"], validation["priors"])
    reference = model.predict((validation["patches"], validation["priors"]), batch_size=1024, verbose=0)
    boxes, targets, scale = validation["boxes"], validation["targets"], float(config["delta_scale"])
    parity = {
        "float32": mean_iou_gain(boxes, targets, reference, scale),
        to: mean_iou_gain(boxes, targets, exported, scale),
        "max_delta_difference": float(np.abs(exported - reference).max() * scale),
    }
    card["metrics"] = parity
    save_card(out, card)
    if detector is not None:
        attach_companion(detector, out, "box_refiner")
    return parity


def _boxes(path: Path):
    if not path.is_file():
        raise GalaxyEdgeError(f"{path}: not found (train --box-refiner writes it beside the model)")
    return np.load(path)
