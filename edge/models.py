"""The models of the chain, as the runtime uses them (detector, its verifier, classifier):
preprocessing from OpenCV's BGR frames to the model's input (quantized through a lookup table),
invoke, dequantize, decode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.interpreter import ModelError, load_interpreter
from edge.model_card import ModelCard, read_model_card
from edge.proposals import SkyProposalSettings, SkySources, proposals_beside, sky_sources
from edge.psf import PsfCalibration
from edge.resize import area_shrink
from edge.tracking import intersection_over_smaller, longer_sides


def resize_like_runtime(image: np.ndarray, width: int, height: int, exact_shrink: bool) -> np.ndarray:
    """An 8-bit image at width x height as the runtime resizes model inputs: exact area averaging
    (edge.resize) to shrink when exact_shrink, else OpenCV's INTER_AREA, and INTER_LINEAR to enlarge
    (fixed-point on 8-bit images: the same pixels on every build)."""
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] >= height and image.shape[1] >= width
    if shrinking and exact_shrink:
        return area_shrink(image, width, height)
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


class TFLiteModel:
    """A .tflite model with its card: one input image tensor (and `extra_inputs` more that a
    subclass feeds), dequantized float outputs."""

    task: str | None = None  # what the card must say (subclasses)
    extra_inputs = 0  # inputs besides the image that a subclass feeds

    def __init__(
        self,
        path: Path | str,
        threads: int | None = None,
        runtime: str | None = None,
        kernels: str = "default",
    ) -> None:
        self.path = Path(path)
        self.interpreter = load_interpreter(self.path, threads, runtime, kernels)
        self.card: ModelCard = read_model_card(self.path)
        details = self.interpreter.get_input_details()
        images = [d for d in details if len(d["shape"]) == 4 and d["shape"][3] == 3]
        if len(images) != 1 or len(details) > 1 + self.extra_inputs:
            raise ModelError(f"{self.path}: expected one (B, H, W, 3) image input, found {details}")
        self.input = images[0]
        self.other_inputs = [d for d in details if d["index"] != self.input["index"]]
        self.outputs = self.interpreter.get_output_details()
        self.height, self.width = int(self.input["shape"][1]), int(self.input["shape"][2])
        self.input_lut = self._input_lookup_table()
        # int8 models fed raw 0-255 pixels (scale 1, zero point -128: the shipped ones) map a pixel p
        # to p - 128, which is p with its top bit flipped, read as int8: one XOR instead of three gathers.
        shifted = (np.arange(256) - 128).astype(np.int8)
        self.input_is_shifted_pixels = self.input_lut.dtype == np.int8 and bool(
            (self.input_lut == shifted).all()
        )
        if self.task and self.card.task != self.task:
            raise ModelError(f"{self.path}: model card says task '{self.card.task}', expected {self.task}")
        self.labels = self.card.labels
        self._configure()

    def _configure(self) -> None:
        """Task-specific setup from the card (subclasses)."""

    def _input_lookup_table(self) -> np.ndarray:
        """(3, 256) table from an 8-bit pixel value to the model's input value, one row per
        model input channel: normalisation and quantization folded into one gather per pixel."""
        pixels = np.arange(256, dtype=np.float64)
        mean, std = np.asarray(self.card.mean, np.float64), np.asarray(self.card.std, np.float64)
        values = (pixels[None, :] - mean[:, None]) / std[:, None]
        dtype = self.input["dtype"]
        scale, zero_point = self.input["quantization"]
        if np.issubdtype(dtype, np.integer) and scale:
            info = np.iinfo(dtype)
            values = np.clip(np.round(values / scale + zero_point), info.min, info.max)
        return values.astype(dtype)

    # Shrink with edge.resize's exact area averaging (the same pixels on a Pi as on x86) rather than
    # OpenCV's INTER_AREA; worth it for small crops, too slow for whole camera frames.
    exact_shrink = False

    def resize_to_input(self, image_bgr: np.ndarray) -> np.ndarray:
        """The image at the model's input size, resized as the runtime always resizes."""
        return resize_like_runtime(image_bgr, self.width, self.height, self.exact_shrink)

    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        """(1, H, W, 3) input tensor from an 8-bit BGR image of any size."""
        image_bgr = self.resize_to_input(image_bgr)
        rgb = self.card.color_order.upper() == "RGB"
        if self.input_is_shifted_pixels:
            # OpenCV's SIMD channel swap, then a contiguous XOR: a strided numpy pass costs ~10 arm64
            # instructions a byte, these well under one.
            image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) if rgb else np.array(image_bgr)
            np.bitwise_xor(image, np.uint8(0x80), out=image)
            return image.view(np.int8)[None]
        # Model channel m reads frame channel source[m] (frames are BGR, as OpenCV gives them).
        source = (2, 1, 0) if rgb else (0, 1, 2)
        tensor = np.empty((1, self.height, self.width, 3), self.input_lut.dtype)
        for model_channel, frame_channel in enumerate(source):
            tensor[0, ..., model_channel] = self.input_lut[model_channel][image_bgr[..., frame_channel]]
        return tensor

    def invoke(self, tensor: np.ndarray, others: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
        """Run the model on an input tensor (and the other inputs' quantized tensors, in
        other_inputs order); float32 outputs in output-detail order."""
        self.interpreter.set_tensor(self.input["index"], tensor)
        for detail, value in zip(self.other_inputs, others, strict=True):
            self.interpreter.set_tensor(detail["index"], value)
        self.interpreter.invoke()
        results = []
        for detail in self.outputs:
            value = self.interpreter.get_tensor(detail["index"])
            scale, zero_point = detail["quantization"]
            if np.issubdtype(value.dtype, np.integer) and scale:
                value = (value.astype(np.float32) - zero_point) * scale
            results.append(value.astype(np.float32, copy=False))
        return results


def decode_center_deltas(
    anchors_yxhw: np.ndarray, deltas: np.ndarray, variance: Sequence[float]
) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 from boxes as (cy, cx, h, w) and deltas (dy, dx, dh, dw) over `variance`:
    keras.utils.bounding_boxes.encode_box_to_deltas's "center_yxhw" encoding undone (edge/ does not
    import Keras). Heights and widths change by exp(dh), exp(dw), clipped to e^10."""
    anchors = np.asarray(anchors_yxhw, np.float32).reshape(-1, 4)
    d = np.asarray(deltas, np.float32).reshape(-1, 4) * np.asarray(variance, np.float32)
    cy = d[:, 0] * anchors[:, 2] + anchors[:, 0]
    cx = d[:, 1] * anchors[:, 3] + anchors[:, 1]
    h = np.exp(np.clip(d[:, 2], -10, 10)) * anchors[:, 2]
    w = np.exp(np.clip(d[:, 3], -10, 10)) * anchors[:, 3]
    return np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def boxes_center_yxhw(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) cy, cx, h, w of x1, y1, x2, y2 boxes."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.column_stack(
        [
            (boxes[:, 1] + boxes[:, 3]) / 2,
            (boxes[:, 0] + boxes[:, 2]) / 2,
            boxes[:, 3] - boxes[:, 1],
            boxes[:, 2] - boxes[:, 0],
        ]
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def dihedral_views(image: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations and flips of a square image (a galaxy has no preferred orientation)."""
    views = []
    for flipped in (image, image[:, ::-1]):
        for turns in range(4):
            views.append(np.ascontiguousarray(np.rot90(flipped, turns)))
    return views


class Classifier(TFLiteModel):
    """Galaxy10 classifier: class probabilities for galaxy crops."""

    exact_shrink = True

    task = "classifier"

    def _configure(self) -> None:
        self.outputs_logits = self.card.raw.get("output", "probabilities") == "logits"
        # Boxes smaller than this are left unclassified by the chain: below it the label was measured
        # to be no better than a constant answer (card field; 0 when absent: classify everything).
        self.resolution_floor_px = self.card.resolution_floor_px or 0.0

    def classify(self, crops_bgr: list[np.ndarray], rotations: bool = False) -> np.ndarray:
        """(N, classes) probabilities; with rotations, the mean over the 8 dihedral views."""
        probabilities = np.zeros((len(crops_bgr), len(self.labels)), np.float32)
        for i, crop in enumerate(crops_bgr):
            tensor = self.preprocess(crop)
            views = dihedral_views(tensor[0]) if rotations else [tensor[0]]
            total = np.zeros(len(self.labels), np.float32)
            for view in views:
                output = self.invoke(view[None])[0].reshape(-1)
                total += _softmax(output) if self.outputs_logits else output
            probabilities[i] = total / len(views)
        return probabilities


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2 in frame pixels
    scores: np.ndarray  # (N,)
    class_ids: np.ndarray  # (N,) int

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep])

    @staticmethod
    def concatenate(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty()
        return Detections(
            np.concatenate([p.boxes for p in parts]).astype(np.float32),
            np.concatenate([p.scores for p in parts]).astype(np.float32),
            np.concatenate([p.class_ids for p in parts]).astype(np.int32),
        )


def _contained(detections: Detections, containment: float) -> Detections:
    """Drop boxes lying mostly (`containment` of their area) inside a higher-scoring box of the
    same class: a galaxy's bright core found beside the whole galaxy overlaps it by far less
    than the IoU threshold, so NMS keeps both. Boxes are in score order."""
    boxes = detections.boxes
    # inside[i, j]: box i lies in a higher-scoring box j of its class (j < i).
    inside = intersection_over_smaller(boxes, boxes, floor=1e-9) >= containment
    inside &= detections.class_ids[:, None] == detections.class_ids[None, :]
    inside &= np.tri(len(boxes), k=-1, dtype=bool)
    keep = np.ones(len(detections), bool)
    # Greedy, in score order: a box is dropped only by a box that is itself kept. Only boxes with
    # some container need the loop.
    for i in np.flatnonzero(inside.any(axis=1)).tolist():
        keep[i] = not (inside[i, :i] & keep[:i]).any()
    return detections.select(np.flatnonzero(keep))


def _voted_boxes(kept: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    # Box voting (Gidaris and Komodakis 2015; YOLOv5's merge NMS): OpenCV's NMS keeps one
    # anchor's box, so which anchor wins a near tie, and with it the box, can flip with one
    # quantization step of a score (x86 and Pi kernels differ by that). The weighted mean of
    # the whole cluster barely moves, and it localizes better than any one anchor.
    # Only boxes that overlap a kept box can reach the IoU threshold. A whole kept-by-candidates IoU
    # matrix cost 77 M arm64 instructions on the 1280x720 sample's twin (252 kept of 2,732 candidates
    # at 0.20, 4 % of the pairs overlapping), so the pairs come from a sweep over the boxes sorted by
    # their left edge: a box that starts over its widest width left of a kept box cannot reach it.
    chosen = boxes[kept]
    order = np.argsort(boxes[:, 0], kind="stable")
    starts = boxes[order, 0]
    widest = float((boxes[:, 2] - boxes[:, 0]).max())
    first = np.searchsorted(starts, chosen[:, 0] - widest, "left")
    counts = np.maximum(np.searchsorted(starts, chosen[:, 2], "left") - first, 0)
    rows = np.repeat(np.arange(len(kept)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = order[np.repeat(first, counts) + offsets]
    # Gathers cost most under arm64 numpy: the pairs that overlap in x first, from one column.
    overlapping = boxes[columns, 2] > np.repeat(chosen[:, 0], counts)
    rows, columns = rows[overlapping], columns[overlapping]
    a, b = chosen[rows], boxes[columns]
    inter = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter *= np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    votes = (inter / np.maximum(union, 1e-9) >= iou_threshold) & (columns != kept[rows])
    # A kept box always votes for itself: a zero-area box has IoU 0 even with itself (a barely
    # trained model makes such boxes), and an empty vote would make its box NaN.
    rows = np.concatenate([rows[votes], np.arange(len(kept))])
    columns = np.concatenate([columns[votes], kept])
    weights = np.concatenate([scores[columns[: votes.sum()]], np.maximum(scores[kept], 1e-12)])
    total = np.bincount(rows, weights, len(kept))
    voted = np.column_stack([np.bincount(rows, weights * boxes[columns, i], len(kept)) for i in range(4)])
    return (voted / total[:, None]).astype(boxes.dtype)


def non_max_suppression(
    detections: Detections, iou_threshold: float, containment: float | None = None, voting: bool = False
) -> Detections:
    """Per-class NMS with OpenCV (no top_k: it would cap candidates before suppression); with
    `voting`, each kept box becomes the score-weighted mean of the boxes it suppressed and
    itself; then, with `containment`, boxes nested in a better one removed."""
    if len(detections) == 0:
        return detections
    keep_all = []
    boxes_all = detections.boxes.copy() if voting else detections.boxes
    for class_id in np.unique(detections.class_ids):
        members = np.flatnonzero(detections.class_ids == class_id)
        boxes = detections.boxes[members]
        xywh = np.column_stack(
            [boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]
        )
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), detections.scores[members].tolist(), 0.0, iou_threshold)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        if voting and len(keep):
            scores = detections.scores[members]
            boxes_all[members[keep]] = _voted_boxes(keep, boxes, scores, iou_threshold)
        keep_all.extend(members[keep])
    keep_all = np.array(sorted(keep_all, key=lambda i: -detections.scores[i]), dtype=np.int64)
    kept = Detections(boxes_all, detections.scores, detections.class_ids).select(keep_all)
    return _contained(kept, containment) if containment else kept


def _finer_levels_of(twin_spec: dict | None, spec: dict | None) -> bool:
    """Whether a frame model's anchor spec is the detector's, or its first levels (a twin exported
    with --frame-strides: the same network cut after its finer levels)."""
    if twin_spec is None or spec is None:
        return twin_spec == spec
    levels = len(twin_spec["strides"])
    return (
        levels > 0
        and {k: v for k, v in twin_spec.items() if k not in ("strides", "sizes")}
        == {k: v for k, v in spec.items() if k not in ("strides", "sizes")}
        and twin_spec["strides"] == spec["strides"][:levels]
        and twin_spec["sizes"] == spec["sizes"][:levels]
    )


def _input_anchors(spec: dict) -> int:
    """Anchors of one training-sized input on a spec's levels (the detector's own count)."""
    side = int(spec["input_size"])
    cells = sum(math.ceil(side / int(stride)) ** 2 for stride in spec["strides"])
    return cells * len(spec["sizes"][0]) * len(spec["aspect_ratios"])


class Detector(TFLiteModel):
    """SSD detector with raw box and class heads decoded here (numpy), or the in-graph
    TFLite_Detection_PostProcess variant."""

    task = "detector"
    verifier: Verifier | None = None  # the card's second look at candidates (set when loaded)
    box_refiner: BoxRefiner | None = None  # the card's second look at boxes (set when loaded)

    def __init__(
        self,
        path: Path | str,
        threads: int | None = None,
        runtime: str | None = None,
        kernels: str = "default",
        verify: bool = True,
        twins: bool = True,
        box_refiner: Path | str | None = None,
        frame_models: Sequence[Path | str] = (),
    ) -> None:
        super().__init__(path, threads, runtime, kernels)
        companion = self.card.raw.get("verifier")
        if verify and companion:
            # The card names the verifier trained on this detector's candidates (beside it).
            self.verifier = Verifier(self.card.path.parent / companion, threads, runtime, kernels)
            self.score_threshold = self.verifier.score_threshold
        refiner = self.card.raw.get("box_refiner")
        if box_refiner is not None:  # given for this run (--box-refiner FILE), in place of the card's
            self.box_refiner = BoxRefiner(box_refiner, threads, runtime, kernels)
        elif verify and refiner:
            # Like the verifier, a companion trained on this detector's boxes; --no-verifier (the
            # detector alone) leaves both out.
            self.box_refiner = BoxRefiner(self.card.path.parent / refiner, threads, runtime, kernels)
        # Whole-frame twins (export --frame-size WxH --detector THIS): the same network at a camera's frame
        # size, which the card names beside it; a frame of that size runs through its twin in one invoke
        # instead of tiles. Decoding, thresholds and the verifier stay this detector's.
        # frame_models given (--frame-model FILE) join the card's, in place of one of the same size.
        self.frame_models: dict[tuple[int, int], Detector] = {}
        named = [self.card.path.parent / name for name in self.card.raw.get("frame_models", [])]
        for twin_path in [*named, *map(Path, frame_models)] if twins else []:
            if not twin_path.is_file():
                raise ModelError(f"{self.card.path}: frame model {twin_path} not found")
            twin = Detector(twin_path, threads, runtime, kernels, verify=False, twins=False)
            if (
                twin.decoding.type != "ssd"
                or twin.labels != self.labels
                or not _finer_levels_of(twin.decoding.anchor_spec, self.decoding.anchor_spec)
            ):
                raise ModelError(
                    f"{twin_path}: a frame model must be the same ssd detector as {self.path}, exported "
                    "for whole frames (export --frame-size): labels or anchors differ"
                )
            self.frame_models[(twin.height, twin.width)] = twin

    @property
    def decode_threshold(self) -> float:
        """Scores kept when decoding: with a verifier, its candidates (the detector's scores down
        to the threshold it was trained on), whatever the final threshold."""
        if self.verifier is None:
            return self.score_threshold
        return self.verifier.candidate_threshold

    def rescore(self, frame_bgr: np.ndarray, found: Detections, sky: SkySources | None = None) -> Detections:
        """The verifier's second look at detections in frame_bgr's pixels (when the card names one),
        with the frame's sky pass where its card calibrates with the PSF (Verifier.rescore)."""
        if self.verifier is None or not len(found):
            return found
        return self.verifier.rescore(frame_bgr, found, sky)

    def confident(self, found: Detections) -> np.ndarray:
        """Indices of the verified detections at the score threshold or above, best first (all of
        them without a verifier: unverified ones were thresholded when decoded)."""
        if self.verifier is None:
            return np.arange(len(found))
        order = np.argsort(-found.scores, kind="stable")
        return order[found.scores[order] >= self.score_threshold]

    def keep_confident(self, found: Detections) -> Detections:
        """Verified detections at the score threshold or above, best first."""
        return found if self.verifier is None else found.select(self.confident(found))

    def refine(
        self, frame_bgr: np.ndarray, found: Detections, detector_scores: np.ndarray, boxed: np.ndarray
    ) -> Detections:
        """found with the boxes the detector drew (`boxed`, a mask: not the sky proposals, whose boxes
        come from thresholding) refined by the card's box refiner (BoxRefiner.refine, given the
        detector's own scores), when it names one."""
        if self.box_refiner is None:
            return found
        chosen = np.flatnonzero(boxed)
        if not len(chosen):
            return found
        boxes = found.boxes.copy()
        boxes[chosen] = self.box_refiner.refine(frame_bgr, boxes[chosen], np.asarray(detector_scores)[chosen])
        return Detections(boxes, found.scores, found.class_ids)

    def sky(self, frame_bgr: np.ndarray) -> SkySources | None:
        """The verifier's pass over frame_bgr's sky (Verifier.sky), None without one."""
        return self.verifier.sky(frame_bgr) if self.verifier is not None else None

    def with_proposals(self, found: Detections, sky: SkySources | None) -> Detections:
        """found and, after them, the verifier's sky proposals among sky's sources (when its card asks
        for them; edge.proposals.proposals_beside, with this detector's NMS threshold as the overlap)
        at the card's prior score, class 0."""
        settings = self.verifier.sky_proposals if self.verifier is not None else None
        if settings is None or sky is None:
            return found
        boxes = proposals_beside(sky.boxes, found.boxes, settings, self.verifier.max_side, self.iou_threshold)
        scores = np.full(len(boxes), settings.prior_score, np.float32)
        return Detections.concatenate([found, Detections(boxes, scores, np.zeros(len(boxes), np.int32))])

    def finish(self, frame_bgr: np.ndarray, found: Detections) -> Detections:
        """The frame's detections after the verifier's second look (at the detector's candidates and
        the sky proposals, with the frame's PSF width), the score threshold and the box refiner's look
        at the detector's boxes that remain: the last step of every whole-frame detection."""
        sky = self.sky(frame_bgr)
        candidates = self.with_proposals(found, sky)
        rescored = self.rescore(frame_bgr, candidates, sky)
        if self.box_refiner is None:
            return self.keep_confident(rescored)
        keep = self.confident(rescored)
        return self.refine(frame_bgr, rescored.select(keep), candidates.scores[keep], keep < len(found))

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        """Detections in a whole frame resized to the input (no tiling), verified."""
        return self.finish(frame_bgr, self.detect_image(frame_bgr))

    def _configure(self) -> None:
        if self.card.decoding is None:
            raise ModelError(f"{self.card.path}: a detector's card needs its decoding parameters")
        self.decoding = self.card.decoding
        self.score_threshold = self.decoding.score_threshold
        self.iou_threshold = self.decoding.iou_threshold
        self.containment = self.decoding.containment
        self.overview_min_side = self.decoding.overview_min_side
        self.overview_fit = self.decoding.overview_fit
        self.overview_replaces = self.decoding.overview_replaces
        self.overview_shrink = self.decoding.overview_shrink
        self.overview_gate_side = self.decoding.overview_gate_side
        if self.decoding.type == "ssd":
            anchors = np.asarray(self.decoding.anchors_center_yxhw, np.float32)
            if anchors.ndim != 2 or anchors.shape[1] != 4:
                raise ModelError(f"{self.card.path}: anchors must be a list of [cy, cx, h, w]")
            self.anchors = anchors
            boxes_shape = self.outputs[self.decoding.outputs["boxes"]]["shape"]
            if int(np.prod(boxes_shape)) != anchors.size:
                raise ModelError(
                    f"{self.path}: box output {list(boxes_shape)} does not match "
                    f"the card's {len(anchors)} anchors"
                )

    def detect_image(self, image_bgr: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> Detections:
        """Detections in one image (resized to the input), in that image's pixels plus offset."""
        height, width = image_bgr.shape[:2]
        model = self.frame_models.get((height, width), self)
        outputs = model.invoke(model.preprocess(image_bgr))
        if self.decoding.type == "tflite_detection_postprocess":
            detections = self._decode_postprocessed(outputs)
        else:
            detections = self._decode_ssd(outputs, model)
        if len(detections):
            detections.boxes *= np.array([width, height, width, height], np.float32)
            detections.boxes += np.array([offset[0], offset[1], offset[0], offset[1]], np.float32)
        return detections

    def _decode_ssd(self, outputs: list[np.ndarray], model: Detector) -> Detections:
        """Boxes from `model`'s outputs and anchors (this detector or a frame model), with this
        detector's thresholds."""
        deltas = outputs[model.decoding.outputs["boxes"]].reshape(-1, 4)
        scores = outputs[model.decoding.outputs["scores"]].reshape(len(deltas), -1)
        lowest = self.decode_threshold
        if model is not self and self.verifier is not None and model.decoding.candidate_threshold:
            # A twin gives each galaxy one look where overlapping tiles give several, so its scores
            # for small faint galaxies run lower; its card may take candidates lower for the verifier
            # (docs/detector.md, "Whole-frame twin with the overview").
            lowest = float(model.decoding.candidate_threshold)
        if self.decoding.score_activation == "sigmoid":
            candidates_scores = scores.max(axis=1)
            # Compare logits with the threshold's logit: the sigmoid is then computed only
            # for the few candidates, not for every anchor.
            threshold = np.log(lowest / (1 - lowest))
            candidates = np.flatnonzero(candidates_scores >= threshold)
            probabilities = 1 / (1 + np.exp(-scores[candidates]))
        else:  # softmax with background in column 0
            probabilities_all = _softmax(scores)[:, 1:]
            candidates = np.flatnonzero(probabilities_all.max(axis=1) >= lowest)
            probabilities = probabilities_all[candidates]
        if len(candidates) == 0:
            return Detections.empty()
        boxes = decode_center_deltas(
            model.anchors[candidates], deltas[candidates], model.decoding.box_variance
        ).clip(0, 1)
        class_ids = probabilities.argmax(axis=1)
        best = probabilities[np.arange(len(candidates)), class_ids]
        detections = Detections(boxes.astype(np.float32), best.astype(np.float32), class_ids.astype(np.int32))
        detections = non_max_suppression(
            detections, self.iou_threshold, self.containment, self.decoding.box_voting
        )
        # The card's cap is per input of this detector's size; a whole-frame twin covers several, so it
        # keeps as many more (a 1280x720 twin: 9 times). Capped at 200, mosaics of 180 small real
        # galaxies lost 0.05 of their recall (docs/detector.md, "Whole-frame twin with the overview").
        spec = model.decoding.anchor_spec
        per_input = _input_anchors(spec) if spec else len(self.anchors)
        cap = round(self.decoding.max_detections * len(model.anchors) / per_input)
        return detections.select(np.arange(min(len(detections), cap)))

    def _decode_postprocessed(self, outputs: list[np.ndarray]) -> Detections:
        # TFLite_Detection_PostProcess: boxes (1, N, 4) as ymin, xmin, ymax, xmax; classes; scores; count.
        order = {"boxes": 0, "classes": 1, "scores": 2, "count": 3}
        if set(self.decoding.outputs) == set(order):  # the card says which output is which
            order = self.decoding.outputs
        boxes, classes, scores, count = (
            outputs[order[k]] if k == "boxes" else outputs[order[k]].reshape(-1)
            for k in ("boxes", "classes", "scores", "count")
        )
        n = int(count[0])
        keep = np.flatnonzero(scores[:n] >= self.decode_threshold)
        yx = boxes.reshape(-1, 4)[keep]
        return Detections(yx[:, [1, 0, 3, 2]].clip(0, 1), scores[keep], classes[keep].astype(np.int32))


def candidate_patches(
    frame_bgr: np.ndarray, boxes: np.ndarray, patch: int, context: float, exact_shrink: bool = True
) -> np.ndarray:
    """(N, patch, patch, 3) uint8: per box, a square of side max(patch, context x its longer side)
    around its centre (edges replicated past the frame), shrunk to patch as the runtime shrinks.
    Small candidates are seen at native scale, where a star's profile differs from a galaxy's."""
    out = np.empty((len(boxes), patch, patch, 3), np.uint8)
    larger: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64).tolist()):
        side = max(patch, round(context * max(x2 - x1, y2 - y1)))
        left, top = round((x1 + x2 - side) / 2), round((y1 + y2 - side) / 2)
        region = square_region(frame_bgr, left, top, side, cv2.BORDER_REPLICATE)
        if side > patch and exact_shrink:
            larger.setdefault(side, []).append((i, region))
        else:
            out[i] = resize_like_runtime(region, patch, patch, exact_shrink)
    # Regions of one side shrink in one exact area shrink (channels and candidates as trailing axes):
    # its cost was mostly numpy's per-call work, about 1.1 M arm64 instructions a candidate.
    for group in larger.values():
        shrunk = area_shrink(np.stack([region for _, region in group], axis=2), patch, patch)
        out[[i for i, _ in group]] = shrunk.transpose(2, 0, 1, 3)
    return out


def square_region(image: np.ndarray, left: int, top: int, size: int, border: int) -> np.ndarray:
    """image[top : top + size, left : left + size], padded where it leaves the image with OpenCV's
    `border` (black for BORDER_CONSTANT); all black when it lies wholly outside."""
    height, width = image.shape[:2]
    inside = image[
        max(top, 0) : max(min(top + size, height), 0), max(left, 0) : max(min(left + size, width), 0)
    ]
    if inside.size == 0:
        return np.zeros((size, size, *image.shape[2:]), image.dtype)
    pad = (max(-top, 0), max(top + size - height, 0), max(-left, 0), max(left + size - width, 0))
    if any(pad):
        inside = cv2.copyMakeBorder(inside, *pad, border, value=(0, 0, 0))
    return inside


def candidate_priors(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, 3) what the verifier knows besides the pixels: the detector's logit and log2 of the
    box's width and height over 16 pixels."""
    sides = np.maximum(np.asarray(boxes)[:, 2:] - np.asarray(boxes)[:, :2], 1.0)
    clipped = np.clip(np.asarray(scores, np.float64), 1e-4, 1 - 1e-4)
    logit = np.log(clipped / (1 - clipped))
    return np.column_stack([logit, np.log2(sides[:, 0]) - 4, np.log2(sides[:, 1]) - 4]).astype(np.float32)


class PatchModel(TFLiteModel):
    """A model that looks at candidates' own pixels (candidate_patches, BGR as cut from the frame) and
    their priors (candidate_priors, its second input), a fixed batch of them per invoke: the verifier
    and the box refiner."""

    exact_shrink = True
    extra_inputs = 1

    def _configure(self) -> None:
        self.batch = int(self.input["shape"][0])
        self.patch = self.height
        if self.other_inputs and list(self.other_inputs[0]["shape"]) != [self.batch, 3]:
            raise ModelError(f"{self.path}: the priors input must be ({self.batch}, 3)")

    def _quantized_priors(self, priors: np.ndarray) -> np.ndarray:
        detail = self.other_inputs[0]
        scale, zero_point = detail["quantization"]
        if np.issubdtype(detail["dtype"], np.integer) and scale:
            info = np.iinfo(detail["dtype"])
            priors = np.clip(np.round(priors / scale + zero_point), info.min, info.max)
        return priors.astype(detail["dtype"])

    def patch_outputs(self, patches: np.ndarray, priors: np.ndarray | None = None) -> np.ndarray:
        """(N, K) the first output's K values per candidate: patches uint8 BGR (N, P, P, 3), priors
        (N, 3) when the model takes them; in batches of the input's."""
        rgb = self.card.color_order.upper() == "RGB"
        width = int(np.prod(self.outputs[0]["shape"][1:]))
        values = np.empty((len(patches), width), np.float32)
        for start in range(0, len(patches), self.batch):
            chunk = patches[start : start + self.batch]
            tensor = np.zeros((self.batch, self.patch, self.patch, 3), np.uint8)
            tensor[: len(chunk)] = chunk[..., ::-1] if rgb else chunk
            if self.input_is_shifted_pixels:
                np.bitwise_xor(tensor, np.uint8(0x80), out=tensor)
                tensor = tensor.view(np.int8)
            else:
                tensor = np.stack([self.input_lut[c][tensor[..., c]] for c in range(3)], axis=-1)
            others = []
            if self.other_inputs:
                padded = np.zeros((self.batch, 3), np.float32)
                padded[: len(chunk)] = priors[start : start + self.batch]
                others = [self._quantized_priors(padded)]
            values[start : start + len(chunk)] = self.invoke(tensor, others)[0].reshape(self.batch, -1)[
                : len(chunk)
            ]
        return values


class Verifier(PatchModel):
    """A second look at a detector's candidates: a small CNN scores each candidate's own pixels
    (candidate_patches) together with the detector's logit and the box size (candidate_priors,
    its second input). It replaces the scores of up to `max_candidates` candidates under
    `max_side` pixels (the highest-scoring first); the others keep the detector's. When its card
    has `sky_proposals`, small sources found by thresholding (edge.proposals) join the candidates."""

    task = "verifier"

    def _configure(self) -> None:
        super()._configure()
        spec = self.card.verification
        self.context = float(spec["context"])
        self.max_side = float(spec["max_side"])
        self.max_candidates = int(spec["max_candidates"])
        self.candidate_threshold = float(spec["candidate_threshold"])
        self.score_threshold = float(spec["score_threshold"])
        self.sky_proposals: SkyProposalSettings | None = None
        self.psf_calibration: PsfCalibration | None = None
        try:
            if spec.get("sky_proposals") is not None:
                self.sky_proposals = SkyProposalSettings.from_card(dict(spec["sky_proposals"]))
            if spec.get("psf_calibration") is not None:
                self.psf_calibration = PsfCalibration.from_card(dict(spec["psf_calibration"]))
        except (TypeError, ValueError) as error:
            raise ModelError(f"{self.card.path}: bad verification settings: {error}") from None

    def sky(self, frame_bgr: np.ndarray) -> SkySources | None:
        """One pass over frame_bgr's sky (edge.proposals.sky_sources) when the card asks for proposals
        or a PSF calibration, with the sky proposals' segmentation (its defaults without them)."""
        if self.sky_proposals is None and self.psf_calibration is None:
            return None
        measurement = self.psf_calibration.measurement if self.psf_calibration is not None else None
        return sky_sources(frame_bgr, self.sky_proposals or SkyProposalSettings(), measurement)

    def logits(self, patches: np.ndarray, priors: np.ndarray | None = None) -> np.ndarray:
        """The galaxy logit per candidate: patches uint8 BGR (N, P, P, 3), priors (N, 3) when
        the model takes them; in batches of the input's."""
        return self.patch_outputs(patches, priors)[:, 0]

    def rescore(self, frame_bgr: np.ndarray, found: Detections, sky: SkySources | None = None) -> Detections:
        """The detections with the chosen candidates' scores replaced by the verifier's: with a PSF
        calibration and a sky pass (Verifier.sky) that measured the PSF's width, its re-scoring of the
        verifier's logit (edge.psf), with the candidates' concentrations over the frame's stars' there
        when the card asks (and only on frames whose stars' lie in the card's fitted range)."""
        chosen = np.flatnonzero(longer_sides(found.boxes) < self.max_side)
        chosen = chosen[np.argsort(-found.scores[chosen], kind="stable")[: self.max_candidates]]
        if not len(chosen):
            return found
        boxes, scores = found.boxes[chosen], found.scores[chosen]
        patches = candidate_patches(frame_bgr, boxes, self.patch, self.context)
        priors = candidate_priors(boxes, scores)
        logit = self.logits(patches, priors)
        rescored = found.scores.copy()
        calibration, concentration, stars = self.psf_calibration, None, float("nan")
        if calibration is not None and sky is not None and calibration.concentration is not None:
            stars = sky.star_concentration(calibration.concentration)
        if calibration is not None and sky is not None and calibration.applies(sky.psf_fwhm, stars):
            if calibration.concentration is not None:
                concentration = sky.concentrations(boxes, calibration.concentration) / stars
            rescored[chosen] = calibration.scores(logit, priors, sky.psf_fwhm, concentration)
        else:
            rescored[chosen] = 1 / (1 + np.exp(-logit))
        return Detections(found.boxes, rescored.astype(np.float32), found.class_ids)


class BoxRefiner(PatchModel):
    """A second look at the detector's boxes: a small CNN sees each box's own pixels (candidate_patches)
    with the detector's logit and the box size (candidate_priors) and gives the box's offset and log
    size change (keras.utils.bounding_boxes' "center_yxhw" deltas over the card's `delta_scale`). The
    detector's boxes of small galaxies are off by a few pixels, which at 10-30 pixels is the difference
    between IoU 0.4 and 0.6 (docs/box_refiner.md). Boxes whose longer side reaches `max_side` are left."""

    task = "box_refiner"

    def _configure(self) -> None:
        super()._configure()
        spec = self.card.refinement
        self.context = float(spec["context"])
        self.max_side = float(spec["max_side"])
        self.delta_scale = float(spec["delta_scale"])

    def refine(self, frame_bgr: np.ndarray, boxes: np.ndarray, detector_scores: np.ndarray) -> np.ndarray:
        """The boxes (N, 4 frame pixels) refined where their longer side is under max_side, given the
        detector's own scores for them (before any verification)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        chosen = np.flatnonzero(longer_sides(boxes) < self.max_side)
        if not len(chosen):
            return boxes
        patches = candidate_patches(frame_bgr, boxes[chosen], self.patch, self.context)
        deltas = self.patch_outputs(patches, candidate_priors(boxes[chosen], detector_scores[chosen]))
        refined = boxes.copy()
        scale = [self.delta_scale] * 4
        refined[chosen] = decode_center_deltas(boxes_center_yxhw(boxes[chosen]), deltas, scale)
        height, width = frame_bgr.shape[:2]
        refined[:, [0, 2]] = refined[:, [0, 2]].clip(0, width)
        refined[:, [1, 3]] = refined[:, [1, 3]].clip(0, height)
        return refined
