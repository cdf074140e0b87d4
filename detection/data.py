"""Training samples for the detector from labelImg annotations: frames in memory, random
crops at native scale (the runtime tiles big frames at native scale), augmentation for sky
images, and anchor targets.

Boxes cut by a crop edge: kept (clipped) when at least MIN_VISIBLE of the box is inside,
the runtime's tiles see the same; less than that, the box becomes an ignore region (neither
galaxy nor background), as do boxes marked difficult.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from detection.anchors import AnchorSpec, anchors_center_yxhw
from galaxy_edge.errors import GalaxyEdgeError

MIN_VISIBLE = 0.5
POSITIVE_IOU = 0.5
NEGATIVE_IOU = 0.4
IGNORE_IOU = 0.2


@dataclasses.dataclass
class Frame:
    path: Path
    image: np.ndarray  # RGB uint8
    boxes: np.ndarray  # (M, 4) x1, y1, x2, y2 pixels
    classes: np.ndarray  # (M,) label index
    ignore: np.ndarray  # (M,) bool: difficult


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise GalaxyEdgeError(f"{path}: cannot read the image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_frames(pairs: Sequence[tuple[Path, object]], labels: Sequence[str]) -> list[Frame]:
    """Frames of (image path, ImageAnnotation) pairs; boxes of other labels (stars) are background."""
    frames = []
    for image_path, annotation in pairs:
        chosen = [b for b in annotation.boxes if b.name in labels]
        boxes = np.array([b.xyxy() for b in chosen], np.float32).reshape(-1, 4)
        frames.append(
            Frame(
                Path(image_path),
                read_rgb(image_path),
                boxes,
                np.array([labels.index(b.name) for b in chosen], np.int32),
                np.array([b.difficult for b in chosen], bool),
            )
        )
    return frames


def box_statistics(frames: Sequence[Frame]) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of the trainable boxes, in frame pixels."""
    boxes = [f.boxes[~f.ignore] for f in frames]
    stacked = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    return stacked[:, 2] - stacked[:, 0], stacked[:, 3] - stacked[:, 1]


def crop_frame(frame: Frame, x0: float, y0: float, side: float, size: int):
    """A square window of `side` frame pixels at (x0, y0), resized to size x size (padded with
    the frame's median where it leaves the frame), with the boxes in it: (image, boxes,
    classes, ignore)."""
    scale = size / side
    matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
    fill = tuple(float(v) for v in np.median(frame.image[::8, ::8].reshape(-1, 3), axis=0))
    image = cv2.warpAffine(
        frame.image,
        matrix,
        (size, size),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    boxes = (frame.boxes - np.array([x0, y0, x0, y0], np.float32)) * scale
    clipped = boxes.clip(0, size)
    full_area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    visible = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0) / full_area
    inside = visible > 0
    ignore = frame.ignore | (visible < MIN_VISIBLE)
    return image, clipped[inside], frame.classes[inside], ignore[inside]


def augment(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips, 90-degree turns (the sky has no up), then photometric changes a different camera
    or night brings: gain per channel, brightness, contrast, gamma, blur, noise."""
    size = image.shape[0]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        image = image[::-1]
        boxes[:, [1, 3]] = size - boxes[:, [3, 1]]
    if rng.random() < 0.5:  # transpose: with the flips, all 8 turns and mirrors
        image = image.transpose(1, 0, 2)
        boxes = boxes[:, [1, 0, 3, 2]]
    pixels = image.astype(np.float32)
    pixels *= rng.uniform(0.85, 1.15, 3) * rng.uniform(0.6, 1.4)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.7, 1.3) + mean
    pixels = 255.0 * (pixels.clip(0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.3:
        pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(0.4, 1.3))
    if rng.random() < 0.5:
        pixels += rng.normal(0, rng.uniform(1, 8), pixels.shape).astype(np.float32)
    return pixels.clip(0, 255).astype(np.uint8), boxes


def _iou_yxyx(anchors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, M) IoU. numpy rather than keras.utils.bounding_boxes.compute_iou: called eagerly per
    image in the input pipeline, the Keras op costs about 10 ms, this 0.3 ms, on 2 cores
    shared with training."""
    top = np.maximum(anchors[:, None, :2], boxes[None, :, :2])
    bottom = np.minimum(anchors[:, None, 2:], boxes[None, :, 2:])
    intersection = np.prod(np.clip(bottom - top, 0, None), axis=-1)
    area_a = np.prod(anchors[:, 2:] - anchors[:, :2], axis=-1)
    area_b = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    return intersection / np.maximum(area_a[:, None] + area_b[None, :] - intersection, 1e-12)


class TargetEncoder:
    """Anchor targets for one image: SSD matching, and delta encoding with
    keras.utils.bounding_boxes (the edge runtime decodes the same deltas)."""

    def __init__(
        self, spec: AnchorSpec, classes: int, box_variance: Sequence[float], matching: str = "atss"
    ) -> None:
        self.spec, self.classes, self.matching = spec, classes, matching
        self.anchors_yxhw = anchors_center_yxhw(spec)
        cy, cx, h, w = self.anchors_yxhw.T
        self.anchors_yxyx = np.column_stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
        self.variance = np.asarray(box_variance, np.float32)
        self.level_slices = []
        start = 0
        for level in range(len(spec.strides)):
            stop = start + spec.grid(level) ** 2 * spec.per_location
            self.level_slices.append(slice(start, stop))
            start = stop

    def _atss(self, iou: np.ndarray, yxyx: np.ndarray, top_k: int = 9) -> tuple[np.ndarray, np.ndarray]:
        """Adaptive training sample selection (Zhang et al. 2020): per box, the top_k anchors
        of each level nearest its centre are candidates; those whose IoU reaches the mean plus
        the standard deviation of the candidates' IoUs, with their centre inside the box, are
        positives. Sizes and levels then need no hand-set IoU threshold, and small galaxies get
        as many positives as large ones. Returns (positive mask, matched box per anchor)."""
        centres = self.anchors_yxhw[:, :2]
        box_centres = (yxyx[:, :2] + yxyx[:, 2:]) / 2
        distance = np.linalg.norm(centres[:, None, :] - box_centres[None, :, :], axis=-1)
        candidates = np.zeros_like(iou, bool)
        for level in self.level_slices:
            k = min(top_k * self.spec.per_location, level.stop - level.start)
            nearest = np.argpartition(distance[level], k - 1, axis=0)[:k]
            candidates[level.start + nearest, np.arange(len(yxyx))[None, :]] = True
        candidate_iou = np.where(candidates, iou, np.nan)
        threshold = np.nanmean(candidate_iou, axis=0) + np.nanstd(candidate_iou, axis=0)
        inside = (
            (centres[:, None, 0] > yxyx[None, :, 0])
            & (centres[:, None, 0] < yxyx[None, :, 2])
            & (centres[:, None, 1] > yxyx[None, :, 1])
            & (centres[:, None, 1] < yxyx[None, :, 3])
        )
        accepted = candidates & (iou >= threshold[None, :]) & inside
        # A box smaller than the anchor spacing may hold no anchor centre: its best candidate.
        empty = ~accepted.any(axis=0) & candidates.any(axis=0)
        if empty.any():
            best = np.nanargmax(np.where(candidates[:, empty], iou[:, empty], -1.0), axis=0)
            accepted[best, np.flatnonzero(empty)] = True
        scored = np.where(accepted, iou, -1.0)
        return scored.max(axis=1) > 0, scored.argmax(axis=1)

    def encode(
        self, boxes: np.ndarray, classes: np.ndarray, ignore: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """boxes (M, 4) x1, y1, x2, y2 in input pixels -> (N, 5) deltas + positive flag and
        (N, classes + 1) one-hot + valid flag (0: ignored anchor)."""
        from keras import ops
        from keras.utils import bounding_boxes

        count = len(self.anchors_yxhw)
        box_target = np.zeros((count, 5), np.float32)
        score_target = np.zeros((count, self.classes + 1), np.float32)
        score_target[:, -1] = 1.0
        if len(boxes) == 0:
            return box_target, score_target
        yxyx = (boxes[:, [1, 0, 3, 2]] / self.spec.input_size).astype(np.float32)
        iou = _iou_yxyx(self.anchors_yxyx, yxyx)
        trainable = ~ignore
        if ignore.any():
            near_ignored = iou[:, ignore].max(axis=1) >= IGNORE_IOU
            score_target[near_ignored, -1] = 0.0
        if not trainable.any():
            return box_target, score_target
        iou_t = iou[:, trainable]
        if self.matching == "atss":
            positive, best_box = self._atss(iou_t, yxyx[trainable])
        else:  # SSD: IoU thresholds, every box at least its best anchor, a band ignored
            best_box = iou_t.argmax(axis=1)
            best_iou = iou_t.max(axis=1)
            positive = best_iou >= POSITIVE_IOU
            best_anchor = iou_t.argmax(axis=0)
            has_overlap = iou_t[best_anchor, np.arange(iou_t.shape[1])] > 0
            best_box[best_anchor[has_overlap]] = np.flatnonzero(has_overlap)
            positive[best_anchor[has_overlap]] = True
            between = ~positive & (iou_t.max(axis=1) >= NEGATIVE_IOU)
            score_target[between, -1] = 0.0
        matched = yxyx[trainable][best_box[positive]]
        deltas = bounding_boxes.encode_box_to_deltas(
            anchors=self.anchors_yxyx[positive],
            boxes=matched,
            anchor_format="yxyx",
            box_format="yxyx",
            encoding_format="center_yxhw",
            variance=self.variance,
        )
        box_target[positive, :4] = ops.convert_to_numpy(deltas)
        box_target[positive, 4] = 1.0
        score_target[positive, classes[trainable][best_box[positive]]] = 1.0
        score_target[positive, -1] = 1.0
        return box_target, score_target


class SampleStream:
    """Endless augmented training crops with their targets."""

    def __init__(
        self,
        frames: Sequence[Frame],
        encoder: TargetEncoder,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.6, 1.6),
        augmentation: bool = True,
    ) -> None:
        self.frames, self.encoder, self.seed = frames, encoder, seed
        self.scale_range, self.augmentation = scale_range, augmentation
        self.size = encoder.spec.input_size

    def crop(self, rng: np.random.Generator):
        """One augmented training crop: (image, boxes, classes, ignore)."""
        frame = self.frames[rng.integers(len(self.frames))]
        height, width = frame.image.shape[:2]
        if max(height, width) <= 1.5 * self.size and rng.random() < 0.5:
            # A frame the runtime would not tile: seen whole, as the runtime sees it.
            side = float(max(height, width))
            x0, y0 = (width - side) / 2, (height - side) / 2
        else:
            scale = np.exp(rng.uniform(*np.log(self.scale_range)))
            side = self.size / scale
            x0 = rng.uniform(min(0, width - side), max(0, width - side))
            y0 = rng.uniform(min(0, height - side), max(0, height - side))
        image, boxes, classes, ignore = crop_frame(frame, x0, y0, side, self.size)
        if self.augmentation:
            image, boxes = augment(image, boxes, rng)
        return image, boxes, classes, ignore

    def sample(self, rng: np.random.Generator):
        image, boxes, classes, ignore = self.crop(rng)
        return image, self.encoder.encode(boxes, classes, ignore)

    def __iter__(self) -> Iterator:
        rng = np.random.default_rng(self.seed)
        while True:
            image, (box_target, score_target) = self.sample(rng)
            yield image, {"boxes": box_target, "scores": score_target}


def _batch_arrays(stream: SampleStream, seed: int, index: int, batch_size: int):
    rng = np.random.default_rng([seed, index])
    images, boxes, scores = [], [], []
    for _ in range(batch_size):
        image, (box_target, score_target) = stream.sample(rng)
        images.append(image)
        boxes.append(box_target)
        scores.append(score_target)
    return np.stack(images), np.stack(boxes), np.stack(scores)


def sample_batch(stream: SampleStream, seed: int, index: int, batch_size: int):
    """Batch `index` of a run: a function of (seed, index) alone, so batches do not depend on
    which process made them or how many there are. (float32 images, targets dict)"""
    images, boxes, scores = _batch_arrays(stream, seed, index, batch_size)
    return images.astype(np.float32), {"boxes": boxes, "scores": scores}


def _background_rows(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Which (crop, anchor) rows hold a plain background anchor's targets (no box, valid)."""
    background = np.zeros(scores.shape[-1], np.float32)
    background[-1] = 1.0
    return (boxes == 0).all(axis=-1) & (scores == background).all(axis=-1)


def _packed_batch(stream: SampleStream, seed: int, index: int, batch_size: int):
    """sample_batch as a worker sends it: uint8 pixels and only the anchors that are not plain
    background (positives, ignored), a fifth of the bytes (10 MB for 32 crops of 320 pixels).
    Sending 50 MB float32 batches through the pool held a GPU run to about 250 crops/s."""
    images, boxes, scores = _batch_arrays(stream, seed, index, batch_size)
    rows = np.nonzero(~_background_rows(boxes, scores))
    return images, boxes.shape, scores.shape, rows, boxes[rows], scores[rows]


def _unpacked_batch(packed):
    """The inverse of _packed_batch: sample_batch's arrays exactly, but the pixels stay uint8 (the
    detector's float32 input casts them in the compiled step: a quarter of the bytes to the GPU,
    and no conversion in the process that feeds it)."""
    images, box_shape, score_shape, rows, box_rows, score_rows = packed
    boxes = np.zeros(box_shape, np.float32)
    scores = np.zeros(score_shape, np.float32)
    scores[..., -1] = 1.0
    boxes[rows], scores[rows] = box_rows, score_rows
    return images, {"boxes": boxes, "scores": scores}


_WORKER_STREAM: SampleStream | Exception | None = None  # each worker process's own stream


def _worker_start(frames: Sequence[Frame], encoder: TargetEncoder, scale_range, augmentation: bool) -> None:
    global _WORKER_STREAM
    cv2.setNumThreads(1)  # one process per core already
    try:
        loaded = [dataclasses.replace(frame, image=read_rgb(frame.path)) for frame in frames]
        _WORKER_STREAM = SampleStream(loaded, encoder, scale_range=scale_range, augmentation=augmentation)
    except Exception as error:  # raised by the first batch: a failing initializer makes Pool hang
        _WORKER_STREAM = error


def _worker_batch(task: tuple[int, int, int]):
    seed, index, batch_size = task
    if isinstance(_WORKER_STREAM, Exception):
        raise _WORKER_STREAM
    assert _WORKER_STREAM is not None
    return _packed_batch(_WORKER_STREAM, seed, index, batch_size)


def _worker_environment() -> dict[str, str]:
    """The workers' Keras: the trainer's own backend, except JAX's, which would claim the GPU in
    every worker: Keras's numpy backend there (it needs JAX installed, on the CPU)."""
    import keras

    backend = keras.backend.backend()
    return {
        "KERAS_BACKEND": "numpy" if backend == "jax" else backend,
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """os.environ with `values` set, restored after: what spawned processes start with."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ParallelBatches:
    """Endless training batches made by `workers` processes, in order: sample_batch's, with the
    pixels left uint8 (see _unpacked_batch).

    Augmenting and encoding a crop costs 10-15 ms of one core, so a GPU waits on one process; a
    GPU run needs a dozen. The workers are spawned, not forked (a fork of a process running JAX or
    OpenCV threads can deadlock) and read the frames from their files themselves (pickling a
    gigabyte of pixels to each would take longer).
    Written by hand: keras.utils.PyDataset pickles the whole dataset to its workers and starts a
    new pool every epoch.
    """

    def __init__(self, stream: SampleStream, batch_size: int, workers: int, seed: int = 0) -> None:
        self.batch_size, self.seed, self.read_ahead = batch_size, seed, 2 * workers
        self.pending: collections.deque = collections.deque()
        unreadable = [str(frame.path) for frame in stream.frames if not Path(frame.path).is_file()]
        if unreadable:
            raise GalaxyEdgeError(f"{unreadable[0]}: no such image file (--workers reads frames from files)")
        frames = [dataclasses.replace(frame, image=None) for frame in stream.frames]
        arguments = (frames, stream.encoder, stream.scale_range, stream.augmentation)
        with _environment(_worker_environment()):
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(workers, initializer=_worker_start, initargs=arguments)

    def __iter__(self) -> Iterator:
        # Bounded read-ahead (Pool.imap would drain an endless task list into memory).
        for index in itertools.count():
            self.pending.append(self.pool.apply_async(_worker_batch, ((self.seed, index, self.batch_size),)))
            if len(self.pending) >= self.read_ahead:
                yield _unpacked_batch(self.pending.popleft().get())

    def close(self, timeout_s: float = 120.0) -> None:
        """Lets the batches in flight finish, then lets the workers exit.

        Pool.terminate is the last resort: a worker killed while it writes a batch into the result
        pipe leaves the pipe's lock held, and the pool's task thread then waits on it forever
        (a hang seen in CI, CPython's multiprocessing.Pool).
        """
        deadline = time.monotonic() + timeout_s
        for result in self.pending:
            result.wait(max(0.0, deadline - time.monotonic()))
        finished = all(result.ready() for result in self.pending)
        self.pending.clear()
        if finished:
            self.pool.close()
        else:
            self.pool.terminate()
        self.pool.join()


def validation_tiles(frames: Sequence[Frame], encoder: TargetEncoder, per_frame: int = 4, seed: int = 1):
    """A fixed validation set: native-scale crops, no augmentation. (images, targets dict)."""
    stream = SampleStream(frames, encoder, seed, scale_range=(1.0, 1.0), augmentation=False)
    rng = np.random.default_rng(seed)
    images, boxes, scores = [], [], []
    for _ in range(per_frame * len(frames)):
        image, (box_target, score_target) = stream.sample(rng)
        images.append(image)
        boxes.append(box_target)
        scores.append(score_target)
    return np.stack(images), {"boxes": np.stack(boxes), "scores": np.stack(scores)}
