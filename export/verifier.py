"""Export a verifier (`train --verifier`): TFLite with a fixed batch (two inputs: patches and
priors), the runtime's settings in its card, and its name in its detector's card."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.model_card import FORMAT_VERSION, card_path
from edge.proposals import SkyProposalSettings
from export.card import save_card, tensor_facts
from galaxy_edge.errors import GalaxyEdgeError

BATCH = 32  # patches per invoke: a crowded frame's 512 candidates take 16 invokes, not 512


def export_verifier(
    model_path: Path,
    out: Path,
    to: str,
    score_threshold: float,
    calibration_count: int,
    detector: Path | None = None,
    psf_frames: Path | None = None,
) -> dict:
    """Write out (.tflite), its card and the float/int8 parity on the training's validation candidates;
    with psf_frames (a labelImg folder the verifier never trained on; needs the detector), also the
    PSF calibration fitted there (detection.verifier.fit_psf_calibration)."""
    import keras

    from edge.models import Verifier
    from export.tflite import convert

    if psf_frames is not None and detector is None:
        raise GalaxyEdgeError("--psf-calibration needs --detector: the candidates are that detector's")
    if psf_frames is not None and not Path(psf_frames).is_dir():
        raise GalaxyEdgeError(f"{psf_frames}: not a folder of labelled frames (--psf-calibration)")
    model_path = Path(model_path)
    summary = json.loads(model_path.with_suffix(".json").read_text())
    calibration, validation = (
        _candidates(model_path.parent / name) for name in ("calibration.npz", "validation.npz")
    )
    model = keras.models.load_model(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = max(1, calibration_count // BATCH)
    representative = [calibration["patches"], calibration["priors"]]
    out.write_bytes(convert(model, to, representative, count, batch=BATCH))
    config = summary["config"]
    facts = tensor_facts(out)
    card = {
        **patch_model_card(out, "verifier"),
        "quantization": {"step": facts["outputs"][0]["quantization"]["scale"]},
        "verification": {
            "context": config["context"],
            "max_side": config["max_side"],
            "max_candidates": config["max_candidates"],
            "candidate_threshold": config["candidate_threshold"],
            "score_threshold": score_threshold,
            # Small sources the detector did not propose, found by thresholding (docs/verifier.md, "Sky
            # proposals"): as trained (a verifier trained before them gets the defaults); null: off.
            "sky_proposals": config.get("sky_proposals", asdict(SkyProposalSettings())),
        },
        "training": {k: v for k, v in summary.items() if k != "history"},
        "calibration": {"count": count * BATCH, "source": "training candidates (calibration.npz)"},
    }
    save_card(out, card)
    # Parity: the exported verifier against the Keras model on the validation candidates (held out
    # from training and calibration).
    runtime = Verifier(out)
    exported = runtime.logits(validation["patches"], validation["priors"])
    reference = model.predict((validation["patches"], validation["priors"]), batch_size=1024, verbose=0)
    reference = reference.reshape(-1)
    from sklearn.metrics import roc_auc_score

    labels = validation["labels"]
    parity = {
        "candidates": len(labels),
        "float32_auc": float(roc_auc_score(labels, reference)),
        f"{to}_auc": float(roc_auc_score(labels, exported)),
        "max_probability_difference": float(np.abs(_sigmoid(exported) - _sigmoid(reference)).max()),
    }
    card["metrics"] = parity
    save_card(out, card)
    if psf_frames is not None:
        from detection.verifier import fit_psf_calibration

        card["verification"]["psf_calibration"] = fit_psf_calibration(detector, out, psf_frames)
        save_card(out, card)
        parity["psf_calibration"] = card["verification"]["psf_calibration"]["fitted_on"]
    if detector is not None:
        attach_verifier(detector, out)
    return parity


def patch_model_card(model: Path, task: str) -> dict:
    """The card fields every model of candidate patches shares (edge.models.PatchModel: the verifier,
    the box refiner): its task, its patch input and its outputs, from the .tflite."""
    facts = tensor_facts(model)
    return {
        "format_version": FORMAT_VERSION,
        "task": task,
        "name": model.stem,
        "labels": ["galaxy"],
        "input": {
            "color_order": "BGR",  # patches are cut from OpenCV's frames as they are
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "resize": "patch",
            "note": "raw 0-255 pixels of candidate patches (edge.models.candidate_patches)",
            **next(i for i in facts["inputs"] if len(i["shape"]) == 4),
        },
        "outputs": facts["outputs"],
    }


def attach_verifier(detector: Path, verifier: Path) -> Path:
    """Name the verifier in the detector's card (they must share a folder)."""
    return attach_companion(detector, verifier, "verifier")


def attach_companion(detector: Path, model: Path, key: str) -> Path:
    """Name a model trained on the detector's candidates (its verifier, its box refiner) in the
    detector's card under `key`; they must share a folder."""
    detector_card = card_path(detector)
    if Path(model).resolve().parent != Path(detector).resolve().parent:
        raise GalaxyEdgeError(f"{model}: a {key.replace('_', ' ')} must sit beside its detector {detector}")
    if not detector_card.is_file():
        raise GalaxyEdgeError(f"model card not found: {detector_card}")
    values = json.loads(detector_card.read_text())
    values[key] = Path(model).name
    detector_card.write_text(json.dumps(values, indent=1))
    return detector_card


def _candidates(path: Path):
    if not path.is_file():
        raise GalaxyEdgeError(f"{path}: not found (train --verifier writes it beside the model)")
    return np.load(path)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))
