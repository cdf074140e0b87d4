"""The sky panel: a background thread runs the chain on a camera, a video or a slideshow of
stills, and keeps the latest annotated frame as a JPEG for the page to fetch."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import cv2

from edge.chain import Chain, annotate_result
from edge.sources import ImageFiles, open_source


@dataclass
class SkyFrame:
    jpeg: bytes
    number: int  # frames shown so far: the page refetches when it changes
    source: str
    galaxies: list[dict] = field(default_factory=list)


class SkyFeed:
    """Latest annotated frame of `source_spec` (an `open_source` value). Stills change every
    `interval` seconds and repeat; a camera or video runs as fast as the chain allows."""

    def __init__(self, chain: Chain, source_spec: str, interval: float = 6.0, max_width: int = 1280):
        self.chain = chain
        self.source_spec = source_spec
        self.interval = interval
        self.max_width = max_width
        self.latest: SkyFrame | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sky-feed", daemon=True)

    def start(self) -> SkyFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def frame(self) -> SkyFrame | None:
        with self._lock:
            return self.latest

    def _run(self) -> None:
        shown = 0
        while not self._stop.is_set():
            try:
                source = open_source(self.source_spec)
            except Exception as error:  # shown on the page; the game goes on without the sky
                self.error = str(error)
                print(f"serve: sky source: {error}", file=sys.stderr)
                return
            stills = isinstance(source, ImageFiles)
            try:
                for frame in source:
                    if self._stop.is_set():
                        break
                    try:
                        result = self.chain.process(frame)
                    except Exception as error:  # one bad frame must not end the panel: note it, go on
                        self.error = f"{frame.source}: {error}"
                        print(f"serve: skipped {self.error}", file=sys.stderr)
                        continue
                    self.error = None
                    image = annotate_result(self.chain, result)
                    if image.shape[1] > self.max_width:
                        scale = self.max_width / image.shape[1]
                        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
                    if not ok:
                        continue
                    shown += 1
                    galaxies = [
                        {"label": label, "confidence": round(conf, 3)}
                        for label, conf in zip(result.labels, result.confidences, strict=True)
                    ]
                    with self._lock:
                        self.latest = SkyFrame(encoded.tobytes(), shown, frame.source, galaxies)
                    if stills and self._stop.wait(self.interval):
                        break
            finally:
                source.close()
            if not stills and shown == 0:
                self.error = f"{self.source_spec}: no frames"
                return
            time.sleep(0.1)  # a video or a slideshow repeats
