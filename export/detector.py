"""Detector export: raw box and class heads, batch fixed to 1, int8 input and outputs; the
card carries the anchors and decoding parameters the edge runtime needs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.model_card import FORMAT_VERSION
from galaxy_edge.errors import GalaxyEdgeError

DEFAULT_SCORE_THRESHOLD = 0.35
# NMS IoU of the cards (and of the in-graph post-processing): 0.4 beat 0.5 on 1,000 fresh frames
# (docs/detector.md: NMS threshold 0.4), 0.6 lost.
NMS_IOU_THRESHOLD = 0.4
# A whole-frame twin gives a galaxy one look where the tiles' overlaps give it several, so it hands
# the verifier candidates down to 0.20 rather than the verifier's 0.25; without it, small real galaxies
# were lost (docs/detector.md: whole-frame twin with the overview).
TWIN_CANDIDATE_THRESHOLD = 0.2
# A full twin's overview (boxes of 256 pixels and more) runs only when the twin itself proposes a box of
# this many pixels: on 300 design frames every frame whose overview kept a box had one of 203 (on 1,000
# judging frames 3 of 588 did not, and their confident detections were the same), and a
# frame of small galaxies skips two invokes (session 30: the same mAP on 1,000 new frames, the chain on
# the 1280x720 sample 11 % cheaper; docs/detector.md, "The overview gated by the twin's candidates").
TWIN_OVERVIEW_GATE_SIDE = 128
# A twin exported with only its finer levels (--frame-strides) leaves the galaxies of this many pixels
# and more to an overview of the frame shrunk FINE_TWIN_OVERVIEW_SHRINK times (through the twin of that
# size); the full twin leaves only those of 256 pixels, where its largest anchors end. On 300 design
# frames, 64 scored best of 48-96, and 2 times beside 2.25 ("cover"), 3 and 4; judged on 1,000 new
# frames it lost 0.006 of mAP@0.5, so the shipped twin keeps all levels (docs/detector.md, "A twin of
# the finer levels").
FINE_TWIN_OVERVIEW_MIN_SIDE = 64
FINE_TWIN_OVERVIEW_SHRINK = 2


def detector_summary(model_path: Path) -> dict:
    """The detector.json that `train --detector` writes beside its .keras."""
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        raise GalaxyEdgeError(f"{path}: the detector's summary (config and anchors) is missing")
    summary = json.loads(path.read_text())
    if "config" not in summary or "anchors" not in summary["config"]:
        raise GalaxyEdgeError(f"{path}: not a detector summary (no config.anchors)")
    return summary


def is_detector(model_path: Path) -> bool:
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        return False
    try:
        return "anchors" in json.loads(path.read_text()).get("config", {})
    except (OSError, json.JSONDecodeError):
        return False


def calibration_tiles(
    frames_dir: Path, size: int, count: int, seed: int = 0, frame_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Representative detector inputs: random native-scale crops of the training frames (RGB),
    or with frame_size (height, width) whole frames brought to that size."""
    import cv2

    from galaxy_edge.files import IMAGE_SUFFIXES

    paths = sorted(p for p in Path(frames_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise GalaxyEdgeError(f"{frames_dir}: no images for int8 calibration")
    rng = np.random.default_rng(seed)
    tiles = []
    for index in rng.integers(len(paths), size=count):
        image = cv2.imread(str(paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise GalaxyEdgeError(f"{paths[index]}: cannot read the image")
        height, width = image.shape[:2]
        if frame_size is not None:
            tile = image
            if (height, width) != tuple(frame_size):
                tile = cv2.resize(image, frame_size[::-1], interpolation=cv2.INTER_AREA)
        elif max(height, width) <= 1.5 * size:
            tile = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        else:
            y0 = rng.integers(max(height - size, 0) + 1)
            x0 = rng.integers(max(width - size, 0) + 1)
            tile = cv2.resize(image[y0 : y0 + size, x0 : x0 + size], (size, size))
        tiles.append(cv2.cvtColor(tile, cv2.COLOR_BGR2RGB))
    return np.stack(tiles)


def _output_order(model_path: Path, classes: int) -> dict[str, int]:
    from edge.interpreter import load_interpreter

    details = load_interpreter(model_path).get_output_details()
    by_width = {int(d["shape"][-1]): i for i, d in enumerate(details)}
    if classes != 4 and 4 in by_width and classes in by_width:
        return {"boxes": by_width[4], "scores": by_width[classes]}
    # Keras dict outputs are flattened in key order: boxes, then scores.
    return {"boxes": 0, "scores": 1}


def detector_parity(models: dict[str, Path], data: Path, count: int | None, labels: list[str]) -> dict:
    """mAP and AR of each named detector file (say float32 and int8) on the first `count` frames of
    a labelled folder, through the edge runtime as its card decodes it, without the card's verifier
    or whole-frame twins (the file's own network): the export report's figures and the card's
    top-level metrics."""
    from annotations.dataset import usable_pairs
    from detection.evaluate import MAP_SCORE_THRESHOLD, coco_evaluation
    from edge.models import Detector

    pairs = usable_pairs(data)[:count]
    parity: dict = {"frames": len(pairs)}
    for name, path in models.items():
        detector = Detector(path, verify=False, twins=False)
        detector.score_threshold = MAP_SCORE_THRESHOLD
        metrics, _ = coco_evaluation(detector, pairs, labels)
        parity[name] = {k: metrics[k] for k in ("map50", "map", "ar10", "ar100")}
    return parity


def parity_metrics(parity: dict, data: Path) -> dict:
    """The card's top-level metrics from detector_parity's figures."""
    names = [k for k in parity if k != "frames"]
    return {
        "evaluated_on": str(data),
        "evaluated_frames": parity["frames"],
        **{f"{name}_{k}": v for name in names for k, v in parity[name].items()},
    }


def write_detector_card(
    model_path: Path,
    summary: dict,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    metrics: dict | None = None,
    extra: dict | None = None,
    frame_size: tuple[int, int] | None = None,
    frame_strides: Sequence[int] | None = None,
) -> Path:
    """The model card: anchors, decoding and training facts. frame_strides: the feature levels a
    whole-frame twin kept (whole_frame_model); its anchors are those levels' only."""
    from detection.anchors import AnchorSpec, anchor_grid
    from detection.model import DetectorConfig, downsampling_steps
    from export.card import save_card, tensor_facts

    config = summary["config"]
    levels = DetectorConfig.from_dict(twin_config(config, frame_strides))
    spec = levels.anchors
    steps = downsampling_steps(levels)
    size_text = f"input {spec.input_size}"
    note = "raw 0-255 pixels; big frames are tiled at native scale by the runtime"
    if frame_size is not None:
        size_text = f"whole frames of {frame_size[1]}x{frame_size[0]} (trained on {spec.input_size} crops)"
        if spec.strides != AnchorSpec.from_dict(config["anchors"]).strides:
            size_text += f", levels of strides {','.join(map(str, spec.strides))} only"
        note = "raw 0-255 pixels; frames of this size run whole at native scale (one invoke, no tiles)"
    labels = list(config["labels"])
    facts = tensor_facts(model_path)
    order = _output_order(model_path, len(labels))
    card = {
        "format_version": FORMAT_VERSION,
        "task": "detector",
        "name": Path(model_path).stem,
        "labels": labels,
        "architecture": f"SSDLite {config['backbone']} alpha {config['alpha']}, {size_text}",
        "input": {
            "color_order": "RGB",
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "resize": "stretch",
            "note": note,
            **facts["inputs"][0],
        },
        "decoding": {
            "type": "ssd",
            "anchor_grid": anchor_grid(spec, frame_size, steps),
            "anchor_spec": spec.to_dict(),
            "box_variance": list(config["box_variance"]),
            "deltas_order": ["dy", "dx", "dh", "dw"],
            "score_activation": "sigmoid",
            "score_threshold": score_threshold,
            "iou_threshold": NMS_IOU_THRESHOLD,
            # Off: a box nested in a better one is often a galaxy of its own in a larger galaxy's box
            # (docs/detector.md: containment); the runtime still honours a card that sets it.
            "containment": None,
            # Tiled frames also run whole, shrunk until the shorter side fills the input, for galaxies
            # larger than a tile (docs/detector.md: overview pass, a finer overview); its boxes of at
            # least this many frame pixels join the tiles'. A whole-frame twin sees galaxies whole up
            # to its largest anchors (288 pixels): beside it the pass keeps only its boxes of 256 pixels
            # and more (docs/detector.md: whole-frame twin with the overview, where 128 scored lower);
            # a twin of the finer levels only, from FINE_TWIN_OVERVIEW_MIN_SIDE.
            "overview_min_side": overview_min_side(frame_size, frame_strides is not None),
            "overview_fit": "cover",
            # ... and replace the tiles' (or the twin's) uncut boxes of that size that they cover
            # (docs/detector.md: overview boxes replace the tiles').
            "overview_replaces": True,
            "box_voting": True,
            "max_detections": 200,
            "outputs": order,
        },
        "outputs": facts["outputs"],
        "quantization": {"step": facts["outputs"][order["scores"]]["quantization"]["scale"]},
        "training": {k: v for k, v in summary.items() if k != "history"},
        "metrics": metrics or {},
    }
    if frame_size is not None:
        card["decoding"]["candidate_threshold"] = TWIN_CANDIDATE_THRESHOLD
    if frame_strides is not None:
        card["decoding"]["overview_shrink"] = FINE_TWIN_OVERVIEW_SHRINK
    elif frame_size is not None:  # a twin of the finer levels leaves galaxies from 64 pixels to its overview
        card["decoding"]["overview_gate_side"] = TWIN_OVERVIEW_GATE_SIDE
    return save_card(model_path, card, extra)


def overview_min_side(frame_size: tuple[int, int] | None, fine_twin: bool) -> int:
    """The smallest boxes (frame pixels) the card's overview pass keeps: tiles, a whole-frame twin, or
    a twin of the finer levels only."""
    if frame_size is None:
        return 128
    return FINE_TWIN_OVERVIEW_MIN_SIDE if fine_twin else 256


def twin_config(config: dict, frame_strides: Sequence[int] | None) -> dict:
    """The training config with only the feature levels of frame_strides, a proper prefix of its
    strides (None: all of them). The network up to those levels is the trained one, whole: a level
    reads only the finer ones (no top-down pathway)."""
    if frame_strides is None:
        return config
    strides = list(config["anchors"]["strides"])
    kept = list(frame_strides)
    if not kept or kept != strides[: len(kept)] or len(kept) == len(strides):
        raise GalaxyEdgeError(
            f"--frame-strides {','.join(map(str, kept))}: must be a shorter prefix of the detector's strides "
            f"{','.join(map(str, strides))}"
        )
    if config.get("fpn"):
        raise GalaxyEdgeError(
            "--frame-strides: with a top-down pathway (--fpn) every level reads the coarser ones"
        )
    anchors = dict(config["anchors"], strides=kept, sizes=config["anchors"]["sizes"][: len(kept)])
    return dict(config, anchors=anchors)


def attach_frame_model(detector: Path, frame_model: Path) -> Path:
    """Name a whole-frame export (--frame-size) in the tiled detector's card, in place of one for the
    same frame size, so that the runtime runs frames of that size through it (edge.models.Detector);
    they must share a folder and a training summary. The twin's card gets the detector's verifier,
    so that evaluated on its own it runs as the chain runs it."""
    from edge.model_card import card_path
    from export.card import tensor_facts

    detector, frame_model = Path(detector), Path(frame_model)
    if frame_model.resolve().parent != detector.resolve().parent:
        raise GalaxyEdgeError(f"{frame_model}: a frame model must sit beside its detector {detector}")
    cards = {}
    for path in (detector, frame_model):
        if not card_path(path).is_file():
            raise GalaxyEdgeError(f"model card not found: {card_path(path)}")
        cards[path] = json.loads(card_path(path).read_text())
    base, twin = cards[detector], cards[frame_model]
    if twin.get("training", {}).get("config") != base.get("training", {}).get("config"):
        raise GalaxyEdgeError(f"{frame_model}: not the same network as {detector} (training configs differ)")

    def input_size(path: Path) -> tuple[int, ...]:
        return tuple(tensor_facts(path)["inputs"][0]["shape"][1:3])

    shape = input_size(frame_model)
    kept = []
    for name in base.get("frame_models", []):
        other = detector.parent / name
        if name != frame_model.name and not (other.is_file() and input_size(other) == shape):
            kept.append(name)
    base["frame_models"] = [*kept, frame_model.name]
    for companion in ("verifier", "box_refiner"):
        if base.get(companion):
            twin[companion] = base[companion]
    card_path(frame_model).write_text(json.dumps(twin, indent=1))
    card_path(detector).write_text(json.dumps(base, indent=1))
    return card_path(detector)


def export_detector(
    keras_path: Path,
    out: Path,
    to: str = "int8",
    calibration_frames: Path | None = None,
    calibration_count: int = 300,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    frame_size: tuple[int, int] | None = None,
    frame_strides: Sequence[int] | None = None,
) -> Path:
    """Write the .tflite and its card; int8 needs frames to calibrate on. frame_size: (height,
    width) of a camera's frames, to export the same network for whole frames of that size;
    frame_strides: only its finer feature levels (whole_frame_model)."""
    import keras

    from export.tflite import convert

    summary = detector_summary(keras_path)
    model = keras.models.load_model(keras_path, compile=False)
    if frame_size is not None:
        model = whole_frame_model(model, summary, frame_size, frame_strides)
    elif frame_strides is not None:
        raise GalaxyEdgeError("--frame-strides goes with --frame-size")
    representative = None
    if to == "int8":
        if calibration_frames is None:
            raise GalaxyEdgeError("int8 export of a detector needs --data: frames to calibrate on")
        size = int(model.input_shape[1])
        representative = calibration_tiles(
            calibration_frames, size, calibration_count, frame_size=frame_size
        ).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(convert(model, to, representative, calibration_count))
    extra = (
        {"calibration": {"count": calibration_count, "source": str(calibration_frames)}}
        if representative is not None
        else None
    )
    write_detector_card(
        out, summary, score_threshold, extra=extra, frame_size=frame_size, frame_strides=frame_strides
    )
    return out


def whole_frame_model(
    model, summary: dict, frame_size: tuple[int, int], frame_strides: Sequence[int] | None = None
):
    """The trained detector rebuilt for whole frames of (height, width), with its weights: the
    network is fully convolutional, so one invoke covers the frame at native scale where
    overlapping tiles would process up to 1.6 times its pixels (1280x720: 15 tiles of 320).
    frame_strides: only the feature levels of these strides (a prefix of the trained ones), the
    backbone cut after the last; their outputs are exactly the full network's for those levels, and
    the overview pass beside the twin sees the larger galaxies (1280x720 without strides 32 and 64:
    a quarter fewer multiply-accumulates, docs/detector.md "A twin of the finer levels")."""
    from detection.model import DetectorConfig, build_detector, transfer_weights

    height, width = frame_size
    config = DetectorConfig.from_dict(twin_config(summary["config"], frame_strides))
    largest = max(config.anchors.strides)
    if height < largest or width < largest:
        raise GalaxyEdgeError(f"--frame-size {width}x{height}: each side needs at least {largest} pixels")
    try:
        whole = build_detector(config, None, frame_size)
        if frame_strides is None:
            whole.set_weights(model.get_weights())
        else:
            copied = transfer_weights(model, DetectorConfig.from_dict(summary["config"]), whole, config)
            weighted = [layer for layer in whole.get_layer("backbone").layers if layer.weights]
            weighted += [layer for layer in whole.layers if layer.weights and layer.name != "backbone"]
            if copied != len(weighted):
                raise ValueError(f"{len(weighted) - copied} of its layers have no trained weights")
    except ValueError as error:
        raise GalaxyEdgeError(f"cannot rebuild the detector for {width}x{height} frames: {error}") from None
    return whole


def _postprocess_attributes(summary: dict, score_threshold: float, max_detections: int) -> str:
    """The `experimental_implements` signature that TFLiteConverter turns into the
    TFLite_Detection_PostProcess custom op (the TF Object Detection API's recipe)."""
    variance = summary["config"]["box_variance"]
    attributes = {
        "max_detections": ("i", max_detections),
        "max_classes_per_detection": ("i", 1),
        "detections_per_class": ("i", max_detections),
        "use_regular_nms": ("b", "false"),
        "nms_score_threshold": ("f", score_threshold),
        "nms_iou_threshold": ("f", NMS_IOU_THRESHOLD),
        "y_scale": ("f", 1 / variance[0]),
        "x_scale": ("f", 1 / variance[1]),
        "h_scale": ("f", 1 / variance[2]),
        "w_scale": ("f", 1 / variance[3]),
        "num_classes": ("i", len(summary["config"]["labels"])),
    }
    parts = ['name: "TFLite_Detection_PostProcess"']
    parts += [f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in attributes.items()]
    return " ".join(parts)


def _postprocess_output_order(model_path: Path) -> dict[str, int]:
    """Which output is which: the custom op's outputs are named OP, OP:1, OP:2, OP:3 for
    boxes, classes, scores and count, whatever order the signature lists them in."""
    from edge.interpreter import load_interpreter

    details = load_interpreter(model_path).get_output_details()
    roles = {"": "boxes", "1": "classes", "2": "scores", "3": "count"}
    order = {}
    for index, detail in enumerate(details):
        name = detail["name"]
        suffix = name.rsplit(":", 1)[1] if ":" in name and name.rsplit(":", 1)[1].isdigit() else ""
        order[roles.get(suffix, "boxes")] = index
    if sorted(order) != sorted(roles.values()):  # names not as expected: fall back on shapes
        order = {"boxes": 0, "classes": 1, "scores": 2, "count": 3}
        for index, detail in enumerate(details):
            if len(detail["shape"]) == 3:
                order["boxes"] = index
            elif int(np.prod(detail["shape"])) == 1:
                order["count"] = index
    return order


def export_postprocess_variant(
    keras_path: Path,
    out: Path,
    calibration_frames: Path,
    calibration_count: int = 300,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = 100,
) -> Path:
    """The int8 detector with TFLite_Detection_PostProcess in the graph (float outputs: boxes
    ymin/xmin/ymax/xmax, classes, scores, count), for tools that expect that layout. Built as an
    ExportArchive endpoint calling a tf.function with `experimental_implements`, converted from
    the saved model."""
    import tempfile

    import keras
    import tensorflow as tf

    from detection.anchors import AnchorSpec, anchors_center_yxhw

    summary = detector_summary(keras_path)
    model = keras.models.load_model(keras_path, compile=False)
    size = int(model.input_shape[1])
    anchors = tf.constant(anchors_center_yxhw(AnchorSpec.from_dict(summary["config"]["anchors"])))

    @tf.function(experimental_implements=_postprocess_attributes(summary, score_threshold, max_detections))
    def postprocess(box_encodings, class_predictions, anchor_boxes):
        # Placeholder body: the converter replaces the whole function with the custom op.
        del box_encodings, class_predictions, anchor_boxes
        boxes = tf.constant(0.0, tf.float32, name="boxes")
        classes = tf.constant(0.0, tf.float32, name="classes")
        scores = tf.constant(0.0, tf.float32, name="scores")
        count = tf.constant(0.0, tf.float32, name="num_detections")
        return boxes, classes, scores, count

    def serve(image):
        outputs = model(image, training=False)
        probabilities = tf.sigmoid(outputs["scores"])
        # The op expects a background column first.
        with_background = tf.concat([tf.zeros_like(probabilities[..., :1]), probabilities], axis=-1)
        return postprocess(outputs["boxes"], with_background, anchors)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)])
    representative = calibration_tiles(calibration_frames, size, calibration_count).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        archive.write_out(folder)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([tile[None]] for tile in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.allow_custom_ops = True
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(converter.convert())
    card_file = write_detector_card(out, summary, score_threshold)
    card = json.loads(card_file.read_text())
    card["decoding"] = {
        "type": "tflite_detection_postprocess",
        "score_threshold": score_threshold,
        "max_detections": max_detections,
        "outputs": _postprocess_output_order(out),
        "note": "in-graph TFLite_Detection_PostProcess: float outputs, boxes ymin, xmin, ymax, xmax in 0-1",
    }
    card_file.write_text(json.dumps(card, indent=1))
    return out
