"""x86 wall time of a frame's detection through the whole-frame twin against the tiles, per sample
(docs/detector.md, "Whole-frame twin adopted"): the bench's real frames are the samples resized to
the frame size, so this says which of them make the twin slower, and how many anchors pass the
twin's candidate threshold there.

    PYTHONPATH=. python scripts/probes/twin_timing.py [DETECTOR] [SAMPLES_DIR]

DETECTOR's card names a verifier and a twin (default models/galaxy_detector_int8.tflite); one
thread, the median of 5 runs after one untimed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from edge.models import Detector
from edge.tiling import detect_frame, detect_tiled


def milliseconds(detect, detector: Detector, frame: np.ndarray, repeats: int = 5) -> float:
    detect(detector, frame)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detect(detector, frame)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", type=Path, nargs="?", default=Path("models/galaxy_detector_int8.tflite"))
    parser.add_argument("samples", type=Path, nargs="?", default=Path("samples"))
    args = parser.parse_args()
    detector = Detector(args.detector, 1)
    if not detector.frame_models:
        raise SystemExit(f"{args.detector}: its card names no whole-frame twin")
    (height, width), twin = next(iter(detector.frame_models.items()))
    lowest = twin.decoding.candidate_threshold or detector.decode_threshold
    for path in sorted(args.samples.glob("*.jpg")):
        frame = cv2.resize(cv2.imread(str(path)), (width, height), interpolation=cv2.INTER_AREA)
        logits = twin.invoke(twin.preprocess(frame))[twin.decoding.outputs["scores"]].reshape(-1)
        above = {t: int((logits >= np.log(t / (1 - t))).sum()) for t in (lowest, detector.decode_threshold)}
        print(
            f"{path.name}: twin {milliseconds(detect_frame, detector, frame):.1f} ms, "
            f"tiles {milliseconds(detect_tiled, detector, frame):.1f} ms; anchors at "
            + ", ".join(f"{t:.2f}: {n}" for t, n in above.items())
        )


if __name__ == "__main__":
    main()
