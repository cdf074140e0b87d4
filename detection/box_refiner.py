"""`galaxy-edge train --box-refiner`: a second look at the detector's boxes.

The detector draws a small galaxy's box from stride-8 features: its extent is off by about 15 % of a
side either way (docs/box_refiner.md), which at 10-30 pixels turns many IoUs of 0.6 into 0.4. The
refiner sees the box's own pixels at native scale (edge.models.candidate_patches, as the verifier) with
the detector's logit and the box size (edge.models.candidate_priors), and regresses the box of the galaxy
it lies on: keras.utils.bounding_boxes' "center_yxhw" deltas from the detector's box, over a fixed
`delta_scale` so the targets have about unit spread. It learns on the runtime's own candidates (the
detector's boxes at the verifier's candidate threshold) on frames the detector never trained on.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from galaxy_edge.errors import GalaxyEdgeError

CALIBRATION_BOXES = 2048  # training boxes kept for int8 calibration (the export draws from them)


@dataclass
class BoxRefinerConfig:
    patch: int = 32  # native pixels, as the verifier's: the small galaxies' boxes are the ones off
    context: float = 1.5  # a larger box's patch is 1.5x its longer side, shrunk to `patch`
    max_side: float = 64.0  # boxes at least this long keep the detector's box
    candidate_threshold: float = 0.25  # the detector's boxes the runtime keeps for the verifier
    min_iou: float = 0.25  # a box learns the galaxy it overlaps most from this IoU (else it is left out)
    delta_scale: float = 0.2  # the targets' deltas over this: about unit spread


def box_deltas(boxes: np.ndarray, targets: np.ndarray, delta_scale: float) -> np.ndarray:
    """(N, 4) dy, dx, dh, dw from x1, y1, x2, y2 boxes to their targets, over delta_scale
    (keras.utils.bounding_boxes.encode_box_to_deltas, "center_yxhw"; edge.models.decode_center_deltas
    undoes it)."""
    from keras import ops
    from keras.utils import bounding_boxes

    yxyx = [np.asarray(b, np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]] for b in (boxes, targets)]
    deltas = bounding_boxes.encode_box_to_deltas(
        anchors=yxyx[0],
        boxes=yxyx[1],
        anchor_format="yxyx",
        box_format="yxyx",
        encoding_format="center_yxhw",
        variance=[delta_scale] * 4,
    )
    return np.asarray(ops.convert_to_numpy(deltas), np.float32)


def turned_deltas(deltas: np.ndarray, quarter_turns: int, mirror: bool) -> np.ndarray:
    """The deltas of a patch turned as detection.verifier.turned turns it (np.rot90 over rows and
    columns, then mirrored left-right): each quarter turn moves an offset (dy, dx) to (-dx, dy) and
    swaps height and width."""
    deltas = np.array(deltas, np.float32)
    for _ in range(quarter_turns % 4):
        deltas = deltas[:, [1, 0, 3, 2]] * np.array([-1, 1, 1, 1], np.float32)
    if mirror:
        deltas[:, 1] = -deltas[:, 1]
    return deltas


def harvest_boxes(detector_path: Path, frames: Path, config: BoxRefinerConfig) -> dict[str, np.ndarray]:
    """The detector's boxes (its candidates at config.candidate_threshold, under max_side, tiled as at
    run time) that overlap a labelled galaxy (not `difficult`: below the detection limit a box is the
    light box, not what is seen) at IoU min_iou or more: their patches, priors, the deltas to that
    galaxy's box, both boxes and the frame index of each."""
    import cv2

    from annotations.dataset import usable_pairs
    from edge.models import Detector, candidate_patches, candidate_priors
    from edge.tiling import detect_frame
    from edge.tracking import iou_matrix

    detector = Detector(detector_path, verify=False)
    detector.score_threshold = config.candidate_threshold
    keys = ("patches", "priors", "deltas", "boxes", "targets", "frames")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    pairs = usable_pairs(frames)
    for index, (image_path, annotation) in enumerate(pairs):
        frame = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if frame is None:
            raise GalaxyEdgeError(f"{image_path}: cannot read the image")
        found = detect_frame(detector, frame)
        sides = np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
        boxes, scores = found.boxes[sides < config.max_side], found.scores[sides < config.max_side]
        galaxies = [b for b in annotation.boxes if b.name == detector.labels[0] and not b.difficult]
        truth = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in galaxies], np.float32).reshape(-1, 4)
        if len(boxes) and len(truth):
            overlaps = iou_matrix(boxes, truth)
            near = overlaps.max(axis=1) >= config.min_iou
            boxes, scores = boxes[near], scores[near]
            targets = truth[overlaps.argmax(axis=1)[near]]
            parts["patches"].append(candidate_patches(frame, boxes, config.patch, config.context))
            parts["priors"].append(candidate_priors(boxes, scores))
            parts["deltas"].append(box_deltas(boxes, targets, config.delta_scale))
            parts["boxes"].append(boxes)
            parts["targets"].append(targets)
            parts["frames"].append(np.full(len(boxes), index, np.int32))
        if index % 200 == 0:
            count = sum(map(len, parts["boxes"]))
            print(f"harvest: {index + 1}/{len(pairs)} frames, {count} boxes", file=sys.stderr)
    if not parts["boxes"]:
        raise GalaxyEdgeError(f"{frames}: the detector drew no box near a labelled galaxy")
    return {key: np.concatenate(value) for key, value in parts.items()}


def build_box_refiner(patch: int):
    """Inputs: box patches (pixels 0-255) and priors (edge.models.candidate_priors); output: the four
    deltas over delta_scale. The verifier's network (detection.verifier.build_verifier) with four
    linear outputs: the same cost per box."""
    import keras
    from keras import layers

    from detection.verifier import build_verifier

    trunk = build_verifier(patch)
    features = trunk.layers[-2].output  # the 32 units before the verifier's logit
    return keras.Model(trunk.inputs, layers.Dense(4, name="box_deltas")(features), name="box_refiner")


def mean_iou_gain(boxes: np.ndarray, targets: np.ndarray, deltas: np.ndarray, delta_scale: float) -> dict:
    """How the deltas move boxes towards their targets: mean IoU and the shares at IoU 0.5 and 0.75,
    before and after."""
    from edge.models import boxes_center_yxhw, decode_center_deltas
    from edge.tracking import iou_matrix

    refined = decode_center_deltas(boxes_center_yxhw(boxes), deltas, [delta_scale] * 4)

    def paired(a: np.ndarray) -> np.ndarray:
        return np.array([iou_matrix(a[i : i + 1], targets[i : i + 1])[0, 0] for i in range(len(a))])

    before, after = paired(np.asarray(boxes, np.float32)), paired(refined)
    return {
        "boxes": len(boxes),
        "mean_iou": [float(before.mean()), float(after.mean())],
        "share_iou_0.5": [float((before >= 0.5).mean()), float((after >= 0.5).mean())],
        "share_iou_0.75": [float((before >= 0.75).mean()), float((after >= 0.75).mean())],
    }


def train_box_refiner(
    detector_path: Path,
    frames: Path,
    out: Path,
    epochs: int = 40,
    batch_size: int = 256,
    config: BoxRefinerConfig | None = None,
    seed: int = 0,
    initial: Path | None = None,
    learning_rate: float | None = None,
) -> dict:
    """Harvest the detector's boxes near galaxies on `frames` (harvest_boxes), train with Huber loss on
    a cosine schedule (from 2e-3; from `initial`, a trained refiner's .keras, 2e-4), and write
    out/box_refiner.keras (best validation loss; every tenth frame validates), out/box_refiner.json,
    out/calibration.npz (training boxes for int8 calibration) and out/validation.npz (for the export's
    parity check)."""
    import keras

    from detection.verifier import fit_keeping_best, turned

    config = config or BoxRefinerConfig()
    if not Path(detector_path).is_file():
        raise GalaxyEdgeError(f"{detector_path}: no such detector (train --box-refiner --detector-model)")
    if initial is not None and not Path(initial).is_file():  # before the harvest, not after it
        raise GalaxyEdgeError(f"{initial}: no such box refiner (--from)")
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    data = harvest_boxes(detector_path, frames, config)
    validation = data["frames"] % 10 == 0
    if validation.sum() < 1 or (~validation).sum() < 1:
        raise GalaxyEdgeError(f"{frames}: too few boxes near galaxies to train a box refiner")
    fit_index = np.flatnonzero(~validation)
    steps = max(1, len(fit_index) // batch_size)
    print(f"{len(data['boxes'])} boxes, {validation.sum()} for validation", file=sys.stderr)
    if initial is not None:
        model = keras.models.load_model(initial, compile=False)
        if tuple(model.inputs[0].shape[1:3]) != (config.patch, config.patch):
            raise GalaxyEdgeError(f"{initial}: its patches are not {config.patch} pixels")
    else:
        model = build_box_refiner(config.patch)
    rate = learning_rate or (2e-4 if initial is not None else 2e-3)
    schedule = keras.optimizers.schedules.CosineDecay(rate, epochs * steps)
    model.compile(keras.optimizers.Adam(schedule), keras.losses.Huber(1.0))
    rng = np.random.default_rng(seed)
    patches, priors, deltas = data["patches"], data["priors"], data["deltas"]

    def batches():
        # A galaxy has no preferred orientation: each batch turns and flips its patches, and its
        # targets with them.
        while True:
            order = rng.permutation(fit_index)
            for step in range(steps):
                take = order[step * batch_size : (step + 1) * batch_size]
                quarter_turns, mirror = int(rng.integers(4)), bool(rng.random() < 0.5)
                views = turned(patches[take], priors[take], quarter_turns, mirror)
                yield views, turned_deltas(deltas[take], quarter_turns, mirror)

    validation_data = ((patches[validation], priors[validation]), deltas[validation])
    history, best = fit_keeping_best(
        model, batches(), steps, epochs, validation_data, out / "box_refiner.keras"
    )
    predicted = best.predict((patches[validation], priors[validation]), batch_size=1024, verbose=0)
    summary = {
        "task": "box_refiner",
        "config": asdict(config),
        "detector": str(detector_path),
        "frames": str(frames),
        "from": None if initial is None else str(initial),
        "learning_rate": rate,
        "boxes": len(data["boxes"]),
        "validation": mean_iou_gain(
            data["boxes"][validation], data["targets"][validation], predicted, config.delta_scale
        ),
        "epochs": epochs,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    }
    (out / "box_refiner.json").write_text(json.dumps(summary, indent=1))
    chosen = rng.choice(fit_index, min(CALIBRATION_BOXES, len(fit_index)), replace=False)
    np.savez_compressed(out / "calibration.npz", patches=patches[chosen], priors=priors[chosen])
    np.savez_compressed(
        out / "validation.npz",
        **{key: data[key][validation] for key in ("patches", "priors", "deltas", "boxes", "targets")},
    )
    return summary


def is_box_refiner(model_path: Path) -> bool:
    summary = Path(model_path).with_suffix(".json")
    return summary.is_file() and json.loads(summary.read_text()).get("task") == "box_refiner"
