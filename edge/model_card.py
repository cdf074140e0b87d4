"""The JSON model card beside every .tflite: what the runtime needs to use the model.

The edge runtime reads only the card and the .tflite. Written by export/; the fields the
runtime uses are:

    {
      "format_version": 1,
      "task": "classifier" | "detector" | "verifier" | "box_refiner",
      "labels": ["galaxy"],
      "input": {"color_order": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "stretch"},
      "decoding": {                                   # detectors only
        "type": "ssd" | "tflite_detection_postprocess",
        "anchor_grid": {"height": 320, "width": 320, "levels": [   # "ssd": the anchors, level by
          {"stride": 8, "rows": 40, "columns": 40,     # level, row by row, then kind (anchors_from_grid)
           "first_centre_yx": [4.0, 4.0], "sizes_hw": [[h, w], ...]}, ...]},   # input pixels
        (or "anchors_center_yxhw": [[cy, cx, h, w], ...], normalised to the input: older cards)
        "box_variance": [0.1, 0.1, 0.2, 0.2],
        "score_activation": "sigmoid",
        "score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 200,
        "containment": 0.8,                           # optional: drop boxes nested in a better one
        "overview_min_side": 256,                     # optional: tiled frames also run whole (see
                                                      # edge.tiling.detect_overview), keeping its
                                                      # boxes of at least this many frame pixels
        "overview_fit": "cover",                      # optional: the overview's frame shrunk until
                                                      # its shorter side fills the input, and tiled
                                                      # ("contain", the default: whole in one input)
        "overview_replaces": true,                    # optional: the overview's boxes drop the tiles'
                                                      # (or a twin's) uncut boxes of at least
                                                      # overview_min_side that they cover
        "overview_shrink": 2,                         # optional, a whole-frame twin's: its overview
                                                      # shrinks the frame this many times, through the
                                                      # frame model of that size when there is one
        "overview_gate_side": 128,                    # optional: the overview runs only when the
                                                      # native look has a candidate box this large
                                                      # (frame pixels; absent or null: always)
        "candidate_threshold": 0.2,                   # optional, a whole-frame twin's: with the
                                                      # detector's verifier, the twin's candidates go
                                                      # down to this score (one look where tiles give
                                                      # several; default: the verifier's)
        "box_voting": true,                           # optional: kept boxes = score-weighted means
        "outputs": {"boxes": 0, "scores": 1}          # output tensor order
      },
      "verifier": "galaxy_verifier_int8.tflite",      # detectors, optional: re-scores candidates
      "box_refiner": "galaxy_box_refiner_int8.tflite",  # detectors, optional: refines small boxes
      "frame_models": ["galaxy_detector_1280x720_int8.tflite"],  # detectors, optional: the same
                                                      # network exported for whole frames of a size;
                                                      # frames of that size run through it, one invoke
      "verification": {                               # verifiers only (edge.models.Verifier)
        "context": 1.5, "max_side": 32, "max_candidates": 512,
        "candidate_threshold": 0.05, "score_threshold": 0.35,
        "sky_proposals": {"smoothing_sigma": 1.0, "high_sigma": 6.0,   # optional: small sources found
          "low_sigma": 3.0, "min_area": 5, "background_mesh": 64,      # by thresholding join the
          "prior_score": 0.05, "max_proposals": 128},                  # candidates (edge.proposals)
        "psf_calibration": {"intercept": 0.56, "coefficients": [...20],   # optional: re-scores them
          "measurement": {"peak_sigma": 30, "quantile": 0.2,            # with the frame's PSF width
            "min_stars": 5, "saturation": 0.95},                        # and (optional; 14 weights
          "concentration": {"inner_radius": 1.5, "outer_radius": 5},    # without) each one's
          "star_concentration_range": [0.28, 0.72]}                     # concentration over its stars'
                                                                        # (frames outside: not re-scored)
      },
      "refinement": {"context": 1.5, "max_side": 64,  # box refiners only (edge.models.BoxRefiner):
        "delta_scale": 0.2},                          # boxes under max_side get the model's deltas
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
REFINEMENT_KEYS = ("context", "max_side", "delta_scale")


def anchors_from_grid(grid: dict) -> list[list[float]]:
    """[cy, cx, h, w] per anchor, normalised to the input, from a card's compact anchor_grid: each
    level's cells are `stride` pixels apart from the first cell's centre, and each cell has one
    anchor per (h, w) of `sizes_hw` (pixels); level by level, row by row, column by column, then
    kind: the order of the detector's outputs (detection.anchors writes the grid)."""
    import numpy as np

    height, width = float(grid["height"]), float(grid["width"])
    levels = []
    for level in grid["levels"]:
        stride, sizes = float(level["stride"]), np.asarray(level["sizes_hw"], np.float64).reshape(-1, 2)
        first_y, first_x = (float(v) for v in level["first_centre_yx"])
        cy = (first_y + stride * np.arange(int(level["rows"]))) / height
        cx = (first_x + stride * np.arange(int(level["columns"]))) / width
        anchors = np.zeros((len(cy), len(cx), len(sizes), 4))
        anchors[..., 0] = cy[:, None, None]
        anchors[..., 1] = cx[None, :, None]
        anchors[..., 2] = sizes[:, 0] / height
        anchors[..., 3] = sizes[:, 1] / width
        levels.append(anchors.reshape(-1, 4))
    return np.concatenate(levels).tolist() if levels else []


OVERVIEW_FITS = ("contain", "cover")


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
    overview_fit: str = "contain"  # the overview's frame shrunk whole into the input, or "cover"
    overview_replaces: bool = False  # its boxes drop the native looks' uncut boxes of their size they cover
    candidate_threshold: float | None = None  # a twin's candidates for the verifier (None: the verifier's)
    overview_shrink: int | None = None  # a twin's overview: the frame shrunk this many times (None: the fit)
    overview_gate_side: float | None = None  # the overview runs only if a native candidate is this large
    anchor_spec: dict | None = None  # how the anchors were made (strides, sizes, ...; older cards: None)


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
    refinement: dict | None = None
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
                anchors_center_yxhw=(
                    anchors_from_grid(spec["anchor_grid"])
                    if "anchor_grid" in spec
                    else spec.get("anchors_center_yxhw", [])
                ),
                box_variance=tuple(spec.get("box_variance", (0.1, 0.1, 0.2, 0.2))),
                score_activation=spec.get("score_activation", "sigmoid"),
                score_threshold=float(spec.get("score_threshold", 0.3)),
                iou_threshold=float(spec.get("iou_threshold", 0.5)),
                max_detections=int(spec.get("max_detections", 200)),
                outputs=dict(spec.get("outputs", {"boxes": 0, "scores": 1})),
                containment=spec.get("containment"),
                box_voting=bool(spec.get("box_voting", False)),
                overview_min_side=spec.get("overview_min_side"),
                overview_fit=str(spec.get("overview_fit") or "contain"),  # absent or null: the default
                overview_replaces=bool(spec.get("overview_replaces", False)),
                candidate_threshold=spec.get("candidate_threshold"),
                overview_shrink=spec.get("overview_shrink"),
                overview_gate_side=spec.get("overview_gate_side"),
                anchor_spec=spec.get("anchor_spec"),
            )
            if decoding.type == "ssd" and not decoding.anchors_center_yxhw:
                raise KeyError("decoding.anchor_grid")
            for name in ("overview_min_side", "overview_gate_side"):
                size = getattr(decoding, name)
                numeric = isinstance(size, int | float) and not isinstance(size, bool)
                if size is not None and (not numeric or size <= 0):
                    raise ValueError(f"decoding.{name} must be a size in pixels, not {size!r}")
            low = decoding.candidate_threshold
            if low is not None and (isinstance(low, bool) or not 0 < float(low) < 1):
                raise ValueError(f"decoding.candidate_threshold must be a score between 0 and 1, not {low!r}")
            shrink = decoding.overview_shrink
            if shrink is not None and (not isinstance(shrink, int) or isinstance(shrink, bool) or shrink < 2):
                raise ValueError(f"decoding.overview_shrink must be a whole number from 2, not {shrink!r}")
            if decoding.overview_fit not in OVERVIEW_FITS:
                fits = " or ".join(OVERVIEW_FITS)
                raise ValueError(f"decoding.overview_fit must be {fits}, not {decoding.overview_fit!r}")
        verification = None
        if task == "verifier":
            verification = dict(raw["verification"])
            for key in VERIFICATION_KEYS:
                if key not in verification:
                    raise KeyError(f"verification.{key}")
        refinement = None
        if task == "box_refiner":
            refinement = dict(raw["refinement"])
            for key in REFINEMENT_KEYS:
                if key not in refinement:
                    raise KeyError(f"refinement.{key}")
                if isinstance(refinement[key], bool) or not float(refinement[key]) > 0:
                    raise ValueError(f"refinement.{key} must be a number over 0, not {refinement[key]!r}")
        elif task not in ("classifier", "detector", "verifier"):
            raise KeyError(f"task (got {task!r}, expected classifier, detector, verifier or box_refiner)")
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
            refinement=refinement,
            resolution_floor_px=None if floor is None else float(floor),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise GalaxyEdgeError(f"{path}: model card is missing or has a bad field: {error}") from None
