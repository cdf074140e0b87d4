"""The real-time chain: frame -> detect (whole frame or tiles) -> square crops -> classify
(batched, optional rotations, reject option) -> track and vote -> sinks, with per-stage
latency."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.models import Classifier, Detections, Detector, square_region
from edge.sinks import (
    UNCERTAIN,
    UNRESOLVED,
    AnnotatedSink,
    CatalogSink,
    JsonlSink,
    LiveWindow,
    annotate,
    track_label,
)
from edge.sources import Frame, FrameSource
from edge.tiling import RollingTiles, detect_tiled, detect_whole, needs_tiling
from edge.tracking import IouTracker, Track

STAGES = ("capture", "detect", "crop", "classify", "track", "annotate", "write")


@dataclass
class ChainSettings:
    tiling: str = "auto"  # auto: tile frames much larger than the detector input; on; off
    crop_scale: float = (
        1.5  # crop side over the box's longer side (classifier stamps show sky around the galaxy)
    )
    rotations: bool = False  # average the classifier over the 8 rotations and flips
    reject_threshold: float = 0.4  # top probability under this: "uncertain"
    # Boxes whose longer side is under this are "unresolved" and not classified; None: the classifier
    # card's resolution floor (docs/classifier.md: below it the label was no better than a constant
    # answer); 0: none.
    min_classify_px: float | None = None
    score_threshold: float | None = None  # detector threshold (default: the model card's)
    reclassify_every: int = 30
    tiles_per_frame: int | None = None  # live views: run this many tiles a frame (RollingTiles); None: all
    annotate: bool = True
    annotated_video: bool = False
    save_crops: bool = False
    show: bool = False


@dataclass
class StageTimer:
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, stage: str, seconds: float) -> None:
        self.samples[stage].append(seconds * 1000)

    def percentiles(self, stage: str) -> dict[str, float]:
        values = np.asarray(self.samples.get(stage, []), np.float64)
        if values.size == 0:
            return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {
            "p50_ms": float(p50),
            "p90_ms": float(p90),
            "p99_ms": float(p99),
            "mean_ms": float(values.mean()),
        }


@dataclass
class FrameResult:
    frame: Frame
    detections: Detections
    tracks: list[Track]
    labels: list[str]
    confidences: list[float]
    latency_ms: dict[str, float]


def square_crop(image: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray:
    """A square crop centred on the box, `scale` times its longer side, padded with black
    where it leaves the frame (galaxies at the edge keep their place in the crop)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 4.0) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    return square_region(image, left, top, max(round(side), 4), cv2.BORDER_CONSTANT)


class Chain:
    def __init__(
        self, detector: Detector, classifier: Classifier | None, settings: ChainSettings | None = None
    ):
        self.detector = detector
        self.classifier = classifier
        self.settings = settings or ChainSettings()
        if self.settings.score_threshold is not None:
            detector.score_threshold = self.settings.score_threshold
        self.tracker = IouTracker(reclassify_every=self.settings.reclassify_every)
        self.timer = StageTimer()
        self.class_labels = classifier.labels if classifier else []
        floor = self.settings.min_classify_px
        self.min_classify_px = (
            (classifier.resolution_floor_px if classifier else 0.0) if floor is None else floor
        )
        self._scene: str | None = None
        self.rolling = (
            RollingTiles(detector, self.settings.tiles_per_frame) if self.settings.tiles_per_frame else None
        )

    def detect(self, image: np.ndarray) -> Detections:
        # Rolling tiles (a live view) spread the tiles over frames even where a whole-frame twin could
        # run the frame in one invoke: a steady, smaller cost per frame is what they are asked for.
        tile = self.settings.tiling == "on" or (
            self.settings.tiling == "auto"
            and needs_tiling(self.detector, image.shape, twins=not self.rolling)
        )
        if not tile:
            return detect_whole(self.detector, image)
        return self.rolling.detect(image) if self.rolling else detect_tiled(self.detector, image)

    def process(self, frame: Frame, capture_ms: float = 0.0) -> FrameResult:
        # A video's frames are "PATH#INDEX": one scene. Another file (a folder of stills) is
        # another scene: nothing carries over from the last one.
        scene = frame.source.split("#", 1)[0]
        if self._scene is not None and scene != self._scene:
            self.tracker.end_scene()
            if self.rolling:
                self.rolling.shape = None
        self._scene = scene
        latency = {"capture": capture_ms}
        started = time.perf_counter()
        detections = self.detect(frame.image)
        latency["detect"] = _lap(started)

        started = time.perf_counter()
        # The classifier refines the detector's first label (galaxy); boxes of its other labels
        # (a detector fine-tuned with stars, say) keep theirs.
        others = [None if c == 0 else self.detector.labels[c] for c in detections.class_ids.tolist()]
        tracks = self.tracker.update(detections.boxes, detections.scores, frame.index, others)
        if self.classifier:
            sides = np.maximum(
                detections.boxes[:, 2] - detections.boxes[:, 0],
                detections.boxes[:, 3] - detections.boxes[:, 1],
            )
            for track, side in zip(tracks, sides.tolist(), strict=True):
                track.unresolved = side < self.min_classify_px
        latency["track"] = _lap(started)

        started = time.perf_counter()
        todo = [
            i
            for i, t in enumerate(tracks)
            if self.classifier
            and t.detector_label is None
            and not t.unresolved
            and self.tracker.needs_classification(t, frame.index)
        ]
        crops = [square_crop(frame.image, detections.boxes[i], self.settings.crop_scale) for i in todo]
        latency["crop"] = _lap(started)

        started = time.perf_counter()
        if crops:
            probabilities = self.classifier.classify(crops, rotations=self.settings.rotations)
            for i, p in zip(todo, probabilities, strict=True):
                tracks[i].add_classification(p, frame.index)
        latency["classify"] = _lap(started)

        labels, confidences = [], []
        for track in tracks:
            label, confidence = track_label(track, self.class_labels, self.settings.reject_threshold)
            unrefined = not self.classifier and track.detector_label is None
            labels.append(self.detector.labels[0] if unrefined else label)
            confidences.append(confidence)
        return FrameResult(frame, detections, tracks, labels, confidences, latency)


def _lap(started: float) -> float:
    return (time.perf_counter() - started) * 1000


@dataclass
class RunSummary:
    frames: int
    galaxies: int
    skipped: int
    dropped: int
    reconnects: int
    stages: dict[str, dict[str, float]]
    fps: float
    frame_age_ms: dict[str, float]
    out: Path
    unresolved: int = 0  # galaxies left unclassified, under the resolution floor when last seen

    def lines(self) -> list[str]:
        unresolved = (
            f", {self.unresolved} of them unresolved (too small to classify)" if self.unresolved else ""
        )
        lines = [
            f"{self.frames} frames, {self.galaxies} galaxies (unique tracks){unresolved}, "
            f"{self.dropped} dropped frames, "
            f"{self.skipped} unreadable frames skipped, {self.fps:.1f} frames/s, "
            f"frame age p50 {self.frame_age_ms['p50_ms']:.1f} ms p90 {self.frame_age_ms['p90_ms']:.1f} ms",
            "latency per stage (ms):   p50     p90",
        ]
        for stage in STAGES:
            if stage in self.stages:
                lines.append(
                    f"  {stage:<20} {self.stages[stage]['p50_ms']:7.2f} {self.stages[stage]['p90_ms']:7.2f}"
                )
        lines.append(f"results in {self.out}: detections.jsonl, catalog.csv, annotated/")
        return lines


class _StopRequest:
    """SIGTERM and the first Ctrl-C ask the loop to stop between frames, so the frame in
    progress is finished and written; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        if not _main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def run(chain: Chain, source: FrameSource, out: Path, max_frames: int | None = None) -> RunSummary:
    """Run the chain over a source, writing every frame's results as it goes."""
    out.mkdir(parents=True, exist_ok=True)
    settings = chain.settings
    jsonl = JsonlSink(out / "detections.jsonl")
    catalog = CatalogSink(out / "catalog.csv")
    annotated = AnnotatedSink(out / ("annotated.mp4" if settings.annotated_video else "annotated"))
    window = LiveWindow() if settings.show else None
    crops_dir = out / "crops"
    palette = palette_of(chain)
    ages: list[float] = []
    frames = 0
    stop = _StopRequest()
    stop.install()
    started = time.perf_counter()
    iterator = iter(source)
    try:
        while (max_frames is None or frames < max_frames) and not stop.requested:
            fetch = time.perf_counter()
            try:
                frame = next(iterator)
            except StopIteration:
                break
            result = chain.process(frame, capture_ms=_lap(fetch))
            timer = chain.timer
            for stage, ms in result.latency_ms.items():
                timer.add(stage, ms / 1000)

            tick = time.perf_counter()
            image = None
            if settings.annotate or window:
                image = annotate_result(chain, result, palette)
            timer.add("annotate", time.perf_counter() - tick)

            tick = time.perf_counter()
            for track in result.tracks:
                catalog.note(track, frame)
            jsonl.write(_record(frame, result, chain))
            if settings.annotate and image is not None:
                annotated.write(frame, image)
            if settings.save_crops:
                _save_crops(crops_dir, frame, result, settings.crop_scale)
            if frames % 30 == 0:
                catalog.write(chain.tracker.all_tracks(), chain.class_labels, settings.reject_threshold)
            timer.add("write", time.perf_counter() - tick)
            ages.append((time.perf_counter() - frame.captured) * 1000)
            frames += 1
            if window is not None and image is not None and not window.show(image):
                break
    except KeyboardInterrupt:
        print("interrupted: writing what was produced", file=sys.stderr)
    finally:
        elapsed = time.perf_counter() - started
        catalog.write(chain.tracker.all_tracks(), chain.class_labels, settings.reject_threshold)
        jsonl.close()
        annotated.close()
        source.close()
        if window is not None:
            window.close()
        stop.restore()
        if stop.requested:
            print("stopped on request: everything produced is written", file=sys.stderr)
    age = np.asarray(ages) if ages else np.zeros(1)
    return RunSummary(
        frames=frames,
        galaxies=sum(t.detector_label is None for t in chain.tracker.all_tracks()),
        unresolved=sum(t.detector_label is None and t.unresolved for t in chain.tracker.all_tracks()),
        skipped=source.stats.skipped,
        dropped=source.stats.dropped,
        reconnects=source.stats.reconnects,
        stages={stage: chain.timer.percentiles(stage) for stage in STAGES if stage in chain.timer.samples},
        fps=frames / elapsed if elapsed > 0 else 0.0,
        frame_age_ms={"p50_ms": float(np.percentile(age, 50)), "p90_ms": float(np.percentile(age, 90))},
        out=out,
    )


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def annotate_result(
    chain: Chain, result: FrameResult, palette: dict[str, tuple[int, int, int]] | None = None
) -> np.ndarray:
    """The frame with each galaxy's box, track number, class and confidence drawn."""
    captions = [
        _caption(t.track_id, label, conf)
        for t, label, conf in zip(result.tracks, result.labels, result.confidences, strict=True)
    ]
    palette = palette if palette is not None else palette_of(chain)
    return annotate(result.frame.image, result.detections.boxes, captions, result.labels, palette)


def _caption(track_id: int, label: str, confidence: float) -> str:
    if label == UNCERTAIN:
        return f"{track_id} ?"
    if label == UNRESOLVED:  # the track id only: words on a crowded field's many small boxes would bury it
        return str(track_id)
    return f"{track_id} {label} {confidence:.2f}"


def palette_of(chain: Chain) -> dict[str, tuple[int, int, int]]:
    """BGR drawing colour per class, from the classifier's card."""
    palette = {UNCERTAIN: (160, 160, 160), UNRESOLVED: (215, 215, 215)}
    colors = chain.classifier.card.raw.get("colors_rgb") if chain.classifier else None
    if colors:
        for name, (r, g, b) in zip(chain.class_labels, colors, strict=False):
            palette[name] = (b, g, r)
    return palette


def _record(frame: Frame, result: FrameResult, chain: Chain) -> dict:
    height, width = frame.image.shape[:2]
    detections = []
    for i, track in enumerate(result.tracks):
        entry = {
            "box": [round(float(v), 1) for v in result.detections.boxes[i]],
            "score": round(float(result.detections.scores[i]), 4),
            "label": result.labels[i],
            "confidence": round(result.confidences[i], 4),
            "track_id": track.track_id,
        }
        probabilities = track.probabilities
        if probabilities is not None:
            entry["probs"] = {
                n: round(float(p), 4) for n, p in zip(chain.class_labels, probabilities, strict=True)
            }
        detections.append(entry)
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "frame": frame.index,
        "source": frame.source,
        "width": width,
        "height": height,
        "detections": detections,
        "latency_ms": {k: round(v, 2) for k, v in result.latency_ms.items()},
    }


def _save_crops(folder: Path, frame: Frame, result: FrameResult, scale: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, track in enumerate(result.tracks):
        if track.last_classified_frame == frame.index:
            crop = square_crop(frame.image, result.detections.boxes[i], scale)
            cv2.imwrite(str(folder / f"track{track.track_id:05d}_frame{frame.index:06d}.png"), crop)
