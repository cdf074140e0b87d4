"""Outputs of the shipped models on fixed inputs, as JSON on stdout; run by both the x86 and the
emulated Pi interpreters (it imports only the edge runtime, numpy and OpenCV).

    python -m tests.model_outputs MODELS_DIR SAMPLES_DIR [KERNELS]

KERNELS is the runtime's "default" or TFLite's "builtin" ones (see edge.interpreter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.models import Classifier, Detector
from edge.tiling import detect_frame


def standalone_models(models: Path) -> list[Path]:
    """The .tflite files in `models` that run on their own: not verifiers, box refiners nor whole-frame
    twins, which run inside the detection of the detector whose card names them."""
    cards = {
        path: json.loads(path.with_suffix(".json").read_text()) for path in sorted(models.glob("*.tflite"))
    }
    inside = {name for card in cards.values() for name in card.get("frame_models", [])}
    companions = ("verifier", "box_refiner")
    return [path for path, card in cards.items() if not (card["task"] in companions or path.name in inside)]


def main(models: Path, samples: Path, kernels: str = "default") -> None:
    images = [cv2.imread(str(p)) for p in sorted(samples.glob("*.jpg"))]
    # Classifier inputs as the chain makes them: square crops centred on sources (the brightest
    # local maxima of each sample), at several sizes.
    crops = []
    for image in images:
        grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (0, 0), 3)
        peaks = (grey == cv2.dilate(grey, np.ones((15, 15), np.uint8))) & (grey > np.percentile(grey, 99))
        ys, xs = np.nonzero(peaks)
        order = np.argsort(-grey[ys, xs])[:60]
        for rank, (y, x) in enumerate(zip(ys[order], xs[order], strict=True)):
            half = (24, 40, 64)[rank % 3]
            crop = image[max(y - half, 0) : y + half, max(x - half, 0) : x + half]
            if min(crop.shape[:2]) >= 16:
                crops.append(crop)
    output: dict = {}
    for path in standalone_models(models):
        card = json.loads(path.with_suffix(".json").read_text())
        int8 = card.get("input", {}).get("dtype") == "int8"
        # Emulated float arithmetic is 200-400x slower than native: float models see a third of the
        # crops and the frames under 0.2 megapixel (the int8 models, which Pi users run, see them all).
        if card["task"] == "classifier":
            output[path.name] = (
                Classifier(path, kernels=kernels).classify(crops if int8 else crops[::3]).tolist()
            )
        else:
            detector = Detector(path, kernels=kernels)
            found = []
            small = [image for image in images if image.shape[0] * image.shape[1] <= 200_000]
            for image in images if int8 else small:
                result = detect_frame(detector, image)
                found.append({"boxes": result.boxes.tolist(), "scores": result.scores.tolist()})
            output[path.name] = found
    print(json.dumps(output))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
