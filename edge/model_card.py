"""The JSON model card beside every .tflite: what the runtime needs to use the model.

The edge runtime reads only the card and the .tflite. Written by export/; the fields the
runtime uses are:

    {
      "format_version": 1,
      "task": "classifier" | "detector",
      "labels": ["galaxy"],
      "input": {"color_order": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "stretch"},
      "decoding": {                                   # detectors only
        "type": "ssd" | "tflite_detection_postprocess",
        "anchors_center_yxhw": [[cy, cx, h, w], ...], # normalised to the input, for "ssd"
        "box_variance": [0.1, 0.1, 0.2, 0.2],
        "score_activation": "sigmoid",
        "score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 200,
        "containment": 0.8,                           # optional: drop boxes nested in a better one
        "overview_min_side": 256,                     # optional: tiled frames also run whole (see
                                                      # edge.tiling.detect_overview), keeping its
                                                      # boxes of at least this many frame pixels
        "box_voting": true,                           # optional: kept boxes = score-weighted means
        "outputs": {"boxes": 0, "scores": 1}          # output tensor order
      },
      "verifier": "galaxy_verifier_int8.tflite",      # detectors, optional: re-scores candidates
      "verification": {                               # verifiers only (edge.models.Verifier)
        "context": 1.5, "max_side": 32, "max_candidates": 512,
        "candidate_threshold": 0.05, "score_threshold": 0.35
      },
      "resolution_floor_px": 32,                      # classifiers, optional: detections whose box's
                                                      # longer side is under this are "unresolved", not
                                                      # classified (measured: evaluate --frames)
      "quantization": {"step": 0.0039}                # output score quantization step, for parity checks
    }

Everything else in the card (training data, metrics, hashes, dates) is for people.
The model's float input is (pixel - mean) / std with pixels 0-255 in `color_order`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from galaxy_edge.errors import GalaxyEdgeError

FORMAT_VERSION = 1
VERIFICATION_KEYS = (
    "context",
    "max_side",
    "max_candidates",
    "candidate_threshold",
    "score_threshold",
)


@dataclass
class Decoding:
    type: str = "ssd"
    anchors_center_yxhw: list[list[float]] = field(default_factory=list)
    box_variance: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    score_activation: str = "sigmoid"
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 200
    outputs: dict[str, int] = field(default_factory=lambda: {"boxes": 0, "scores": 1})
    containment: float | None = None  # drop boxes nested this much in a better one (None: off)
    box_voting: bool = False  # each kept box becomes the score-weighted mean of its cluster
    overview_min_side: float | None = None  # tiled frames: whole-frame boxes this large join (None: off)


@dataclass
class ModelCard:
    path: Path
    task: str
    labels: list[str]
    color_order: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "stretch"
    decoding: Decoding | None = None
    score_step: float | None = None
    verification: dict | None = None
    resolution_floor_px: float | None = None
    raw: dict = field(default_factory=dict)


def card_path(model_path: Path | str) -> Path:
    model_path = Path(model_path)
    name = model_path.name
    for suffix in ("_edgetpu.tflite", ".tflite"):
        if name.endswith(suffix):
            # An Edge TPU compilation shares the card of the model it was compiled from.
            return model_path.with_name(name[: -len(suffix)] + ".json")
    return model_path.with_suffix(".json")


def read_model_card(model_path: Path | str) -> ModelCard:
    """The card beside a model; a missing or malformed card names its path."""
    path = card_path(model_path)
    if not path.is_file():
        raise GalaxyEdgeError(f"model card not found: {path} (every .tflite needs its JSON card beside it)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GalaxyEdgeError(f"{path}: model card unreadable ({error})") from None
    try:
        task = raw["task"]
        labels = list(raw["labels"])
        model_input = raw.get("input", {})
        decoding = None
        if task == "detector":
            spec = raw["decoding"]
            decoding = Decoding(
                type=spec.get("type", "ssd"),
                anchors_center_yxhw=spec.get("anchors_center_yxhw", []),
                box_variance=tuple(spec.get("box_variance", (0.1, 0.1, 0.2, 0.2))),
                score_activation=spec.get("score_activation", "sigmoid"),
                score_threshold=float(spec.get("score_threshold", 0.3)),
                iou_threshold=float(spec.get("iou_threshold", 0.5)),
                max_detections=int(spec.get("max_detections", 200)),
                outputs=dict(spec.get("outputs", {"boxes": 0, "scores": 1})),
                containment=spec.get("containment"),
                box_voting=bool(spec.get("box_voting", False)),
                overview_min_side=spec.get("overview_min_side"),
            )
            if decoding.type == "ssd" and not decoding.anchors_center_yxhw:
                raise KeyError("decoding.anchors_center_yxhw")
            overview = decoding.overview_min_side
            if overview is not None and (isinstance(overview, bool) or float(overview) <= 0):
                raise ValueError(f"decoding.overview_min_side must be a size in pixels, not {overview!r}")
        verification = None
        if task == "verifier":
            verification = dict(raw["verification"])
            for key in VERIFICATION_KEYS:
                if key not in verification:
                    raise KeyError(f"verification.{key}")
        elif task not in ("classifier", "detector"):
            raise KeyError(f"task (got {task!r}, expected classifier, detector or verifier)")
        floor = raw.get("resolution_floor_px")
        if floor is not None and (isinstance(floor, bool) or float(floor) < 0):
            raise ValueError(f"resolution_floor_px must be a size in pixels, not {floor!r}")
        return ModelCard(
            path=path,
            task=task,
            labels=labels,
            color_order=model_input.get("color_order", "RGB"),
            mean=tuple(model_input.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(model_input.get("std", (1.0, 1.0, 1.0))),
            resize=model_input.get("resize", "stretch"),
            decoding=decoding,
            score_step=raw.get("quantization", {}).get("step"),
            verification=verification,
            resolution_floor_px=None if floor is None else float(floor),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise GalaxyEdgeError(f"{path}: model card is missing or has a bad field: {error}") from None
