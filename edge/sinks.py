"""Where results go: detections.jsonl (one line per frame, flushed every frame), catalog.csv
of unique galaxies, annotated frames (images or an .mp4), saved crops, a live window."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge.sources import Frame
from edge.tracking import Track
from galaxy_edge.draw import color_for, draw_boxes

UNCERTAIN = "uncertain"
UNRESOLVED = "unresolved"  # a galaxy too small for its class to be told (the classifier's resolution floor)


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("w", buffering=1)  # one run per output folder

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


CATALOG_FIELDS = (
    "track_id",
    "label",
    "confidence",
    "first_frame",
    "last_frame",
    "frames_seen",
    "x",
    "y",
    "width",
    "height",
    "ra_deg",
    "dec_deg",
    "source",
)


class CatalogSink:
    """catalog.csv of unique galaxies (one row per track), rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sky: dict[int, tuple[float, float, str]] = {}

    def note(self, track: Track, frame: Frame) -> None:
        """Remember where a track was seen (and its RA/Dec when the frame has a WCS)."""
        x, y = (track.box[0] + track.box[2]) / 2, (track.box[1] + track.box[3]) / 2
        ra = dec = float("nan")
        if frame.wcs is not None:
            sky = frame.wcs.pixel_to_world_values(x, y)
            ra, dec = float(sky[0]), float(sky[1])
        self.sky[track.track_id] = (ra, dec, frame.source)

    def write(self, tracks: list[Track], labels: list[str], reject_threshold: float) -> None:
        temporary = self.path.with_suffix(".csv.tmp")
        with temporary.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CATALOG_FIELDS)
            for track in tracks:
                label, confidence = track_label(track, labels, reject_threshold)
                ra, dec, source = self.sky.get(track.track_id, (float("nan"), float("nan"), ""))
                x1, y1, x2, y2 = (float(v) for v in track.box)
                writer.writerow(
                    [
                        track.track_id,
                        label,
                        f"{confidence:.4f}",
                        track.first_frame,
                        track.last_frame,
                        track.hits,
                        f"{(x1 + x2) / 2:.1f}",
                        f"{(y1 + y2) / 2:.1f}",
                        f"{x2 - x1:.1f}",
                        f"{y2 - y1:.1f}",
                        "" if np.isnan(ra) else f"{ra:.6f}",
                        "" if np.isnan(dec) else f"{dec:.6f}",
                        source,
                    ]
                )
        os.replace(temporary, self.path)


def track_label(track: Track, labels: list[str], reject_threshold: float) -> tuple[str, float]:
    """The voted class of a track, or 'uncertain' when its top probability is under the threshold;
    a track of another detector label (not classified) has that label and its detection score, and an
    unresolved galaxy (under the classifier's resolution floor) 'unresolved' and its detection score."""
    if track.detector_label is not None:
        return track.detector_label, track.score
    if track.unresolved:
        return UNRESOLVED, track.score
    probabilities = track.probabilities
    if probabilities is None:
        return UNCERTAIN, 0.0
    best = int(np.argmax(probabilities))
    confidence = float(probabilities[best])
    return (labels[best] if confidence >= reject_threshold else UNCERTAIN), confidence


class AnnotatedSink:
    """Annotated frames as images in a folder, or as one .mp4 when the path ends in .mp4."""

    def __init__(self, target: Path, fps: float = 10.0) -> None:
        self.target = target
        self.video = target.suffix.lower() == ".mp4"
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        if not self.video:
            target.mkdir(parents=True, exist_ok=True)

    def write(self, frame: Frame, image: np.ndarray) -> None:
        if self.video:
            if self.writer is None:
                height, width = image.shape[:2]
                self.writer = cv2.VideoWriter(
                    str(self.target), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height)
                )
            self.writer.write(image)
            return
        name = (
            Path(frame.source.split("#")[0]).stem
            if frame.source and not frame.source.startswith("camera")
            else ""
        )
        cv2.imwrite(
            str(self.target / f"{frame.index:06d}_{name or 'frame'}.jpg"),
            image,
            [cv2.IMWRITE_JPEG_QUALITY, 90],
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def annotate(
    image: np.ndarray,
    boxes: np.ndarray,
    captions: list[str],
    class_names: list[str],
    palette: dict[str, tuple[int, int, int]],
) -> np.ndarray:
    colors = [color_for(name, palette) for name in class_names]
    return draw_boxes(image.copy(), boxes, captions, colors)


class LiveWindow:
    """`--show`: a live window (needs an OpenCV build with a GUI, not the headless wheel)."""

    def __init__(self) -> None:
        self.available = True

    def show(self, image: np.ndarray) -> bool:
        """Show a frame; False when the user pressed q or Esc."""
        if not self.available:
            return True
        try:
            cv2.imshow("galaxy-edge", image)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error:
            print(
                "warning: --show needs OpenCV with a GUI (pip install opencv-python); continuing without it",
                file=sys.stderr,
            )
            self.available = False
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.available:
            with contextlib.suppress(cv2.error):
                cv2.destroyAllWindows()


def now() -> float:
    return time.perf_counter()
