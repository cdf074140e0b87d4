"""Frame sources: camera index, stream URL, video file, image file / folder / glob, FITS
files and picamera2. Each yields 8-bit BGR frames with their capture time; unreadable
frames are skipped with a warning naming them, and counted."""

from __future__ import annotations

import glob
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from galaxy_edge.errors import GalaxyEdgeError
from galaxy_edge.files import FITS_SUFFIXES, IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass
class Frame:
    index: int
    image: np.ndarray  # BGR uint8
    source: str  # file path, "camera:0" or the URL
    captured: float  # time.perf_counter() when the frame was read
    wcs: Any = None  # astropy WCS for FITS frames with a celestial header


@dataclass
class SourceStats:
    read: int = 0
    skipped: int = 0  # unreadable frames
    dropped: int = 0  # stale camera frames replaced by newer ones before use
    reconnects: int = 0
    problems: list[str] = field(default_factory=list)


class FrameSource:
    def __init__(self, description: str) -> None:
        self.description = description
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""

    def _skip(self, name: str, reason: str) -> None:
        self.stats.skipped += 1
        message = f"skipped {name}: {reason}"
        self.stats.problems.append(message)
        print(f"warning: {message}", file=sys.stderr)


class ImageFiles(FrameSource):
    def __init__(self, paths: list[Path], description: str) -> None:
        super().__init__(description)
        self.paths = paths

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for path in self.paths:
            if path.name.lower().endswith(FITS_SUFFIXES):
                loaded = _read_fits(path)
                if isinstance(loaded, str):
                    self._skip(str(path), loaded)
                    continue
                image, wcs = loaded
            else:
                image, wcs = cv2.imread(str(path), cv2.IMREAD_COLOR), None
                if image is None:
                    self._skip(str(path), "unreadable or not an image")
                    continue
            self.stats.read += 1
            yield Frame(index, image, str(path), time.perf_counter(), wcs)
            index += 1


def asinh_stretch(data: np.ndarray) -> np.ndarray:
    """8-bit image of linear data: sky at the 5th percentile maps to black, an asinh
    stretch (soft at 3 sigma above the sky) keeps bright cores from saturating."""
    finite = np.nan_to_num(data.astype(np.float32), nan=0.0)
    sky = np.percentile(finite, 5)
    sigma = max(float(np.percentile(finite, 50) - sky), 1e-6) + 1e-6
    peak = float(np.percentile(finite, 99.99)) - sky
    scaled = np.arcsinh(np.clip(finite - sky, 0, None) / (3 * sigma)) / np.arcsinh(
        max(peak, 3 * sigma) / (3 * sigma)
    )
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _read_fits(path: Path) -> tuple[np.ndarray, Any] | str:
    try:
        from astropy.io import fits
        from astropy.wcs import WCS
    except ImportError:
        return "reading FITS needs astropy (pip install astropy)"
    try:
        with fits.open(path, memmap=False) as hdus:
            hdu = next((h for h in hdus if h.data is not None and h.data.ndim >= 2), None)
            if hdu is None:
                return "FITS file has no image data"
            data = np.asarray(hdu.data, np.float32)
            header = hdu.header
    except (OSError, ValueError) as error:
        return f"unreadable FITS ({error})"
    if data.ndim == 3 and data.shape[0] == 3:  # colour planes (R, G, B)
        planes = [asinh_stretch(p) for p in data]
        image = np.dstack([planes[2], planes[1], planes[0]])
    else:
        while data.ndim > 2:
            data = data[0]
        image = cv2.cvtColor(asinh_stretch(data), cv2.COLOR_GRAY2BGR)
    wcs = None
    try:
        candidate = WCS(header, naxis=2)
        if candidate.has_celestial:
            wcs = candidate
    except Exception:  # a malformed WCS is no reason to drop the frame
        wcs = None
    return image, wcs


class VideoFile(FrameSource):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise GalaxyEdgeError(f"{path}: video unreadable")
        self.path = path

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, image = self.capture.read()
            if not ok:
                return
            self.stats.read += 1
            yield Frame(index, image, f"{self.path}#{index}", time.perf_counter())
            index += 1

    def close(self) -> None:
        self.capture.release()


class LiveCapture(FrameSource):
    """A camera or stream read by a background thread that keeps only the newest frame, so
    the chain always works on the present; frames replaced before use count as dropped.
    A lost device is reopened `reconnect_attempts` times, then the run ends cleanly."""

    def __init__(self, target: int | str, reconnect_attempts: int = 5, retry_delay: float = 1.0) -> None:
        super().__init__(f"camera:{target}" if isinstance(target, int) else str(target))
        self.target = target
        self.reconnect_attempts = reconnect_attempts
        self.retry_delay = retry_delay
        self._latest: tuple[np.ndarray, float] | None = None
        self._fresh = threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        self.capture = self._open()
        if self.capture is None:
            raise GalaxyEdgeError(f"{self.description}: cannot open the camera or stream")
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _open(self):
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            return None
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return capture

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            ok, image = self.capture.read() if self.capture is not None else (False, None)
            if ok:
                failures = 0
                with self._fresh:
                    if self._latest is not None:
                        self.stats.dropped += 1
                    self._latest = (image, time.perf_counter())
                    self._fresh.notify()
                continue
            failures += 1
            if failures > self.reconnect_attempts:
                break
            print(
                f"warning: {self.description}: no frame, reconnecting ({failures}/{self.reconnect_attempts})",
                file=sys.stderr,
            )
            self.stats.reconnects += 1
            if self.capture is not None:
                self.capture.release()
            time.sleep(self.retry_delay)
            self.capture = self._open()
        with self._fresh:
            self._ended = True
            self._fresh.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            with self._fresh:
                while self._latest is None and not self._ended:
                    self._fresh.wait(timeout=1.0)
                if self._latest is None:
                    return
                image, captured = self._latest
                self._latest = None
            self.stats.read += 1
            yield Frame(index, image, self.description, captured)
            index += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.capture is not None:
            self.capture.release()


class PiCamera(FrameSource):
    """The Raspberry Pi camera through picamera2 (on Raspberry Pi OS)."""

    def __init__(self) -> None:
        super().__init__("picamera2")
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise GalaxyEdgeError("picamera2 is not installed (sudo apt install python3-picamera2)") from None
        self.camera = Picamera2()
        self.camera.configure(self.camera.create_video_configuration(main={"format": "BGR888"}))
        self.camera.start()

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            image = self.camera.capture_array()
            self.stats.read += 1
            yield Frame(index, np.ascontiguousarray(image[..., :3]), "picamera2", time.perf_counter())
            index += 1

    def close(self) -> None:
        self.camera.stop()


def _expand(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.iterdir()
                if p.is_file()
                and (p.suffix.lower() in IMAGE_SUFFIXES or p.name.lower().endswith(FITS_SUFFIXES))
            )
        else:
            found.append(path)
    return found


def open_source(spec: str) -> FrameSource:
    """A frame source from a --source value (see the module docstring)."""
    if spec.isdigit():
        return LiveCapture(int(spec))
    if spec.lower().startswith(STREAM_PREFIXES):
        return LiveCapture(spec)
    if spec.lower() in ("picamera", "picamera2"):
        return PiCamera()
    if any(ch in spec for ch in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(spec))]
        if not paths:
            raise GalaxyEdgeError(f"{spec}: no files match")
        return ImageFiles(_expand(paths), spec)
    path = Path(spec)
    if not path.exists():
        raise GalaxyEdgeError(f"{spec}: no such file, folder or camera")
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFile(path)
    paths = _expand([path])
    if not paths:
        raise GalaxyEdgeError(f"{spec}: no images or FITS files in this folder")
    return ImageFiles(paths, spec)


def image_inputs(items: list[str]) -> list[Path]:
    """Image files from a list of files, folders and globs (for detect and classify)."""
    paths: list[Path] = []
    for item in items:
        if any(ch in item for ch in "*?["):
            paths += _expand([Path(p) for p in sorted(glob.glob(item))])
        elif Path(item).exists():
            paths += _expand([Path(item)])
        else:
            raise GalaxyEdgeError(f"{item}: no such file or folder")
    if not paths:
        raise GalaxyEdgeError(f"no images found in {' '.join(items)}")
    return paths
