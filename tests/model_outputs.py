"""Outputs of the shipped models on fixed inputs, as JSON on stdout; run by both the x86 and the
emulated Pi interpreters (it imports only the edge runtime, numpy and OpenCV).

    python -m tests.model_outputs MODELS_DIR SAMPLES_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.models import Classifier, Detector
from edge.tiling import detect_tiled, needs_tiling


def main(models: Path, samples: Path) -> None:
    images = [cv2.imread(str(p)) for p in sorted(samples.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(150):  # real crops of every sample, classifier-sized
        image = images[int(rng.integers(len(images)))]
        side = int(rng.integers(40, min(image.shape[:2]) // 2))
        y, x = (int(rng.integers(0, n - side)) for n in image.shape[:2])
        crops.append(image[y : y + side, x : x + side])
    output: dict = {}
    for path in sorted(models.glob("*.tflite")):
        card = json.loads(path.with_suffix(".json").read_text())
        if card["task"] == "classifier":
            output[path.name] = Classifier(path).classify(crops).tolist()
        else:
            detector = Detector(path)
            found = []
            for image in images:
                result = (
                    detect_tiled(detector, image)
                    if needs_tiling(detector, image.shape)
                    else detector.detect_image(image)
                )
                found.append({"boxes": result.boxes.tolist(), "scores": result.scores.tolist()})
            output[path.name] = found
    print(json.dumps(output))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
