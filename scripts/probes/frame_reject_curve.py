"""Ad hoc probe (docs/classifier.md, The classifier's job in the chain): the reject option on the
frame galaxies the chain classifies (box at least the card's resolution floor): share kept and
accuracy of those kept per top-probability threshold (`run --reject-threshold`).

  python scripts/probes/frame_reject_curve.py CLASSIFIER_int8.tflite FRAMES_DIR [FRAMES_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from classification.data import class_labels, frame_galaxy_crops
from classification.evaluate import TFLiteClassifier

THRESHOLDS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> None:
    model = TFLiteClassifier(Path(sys.argv[1]))
    floor = model.resolution_floor_px or 0.0
    for folder in map(Path, sys.argv[2:]):
        images, names, sides, _ = frame_galaxy_crops(folder, model.input_shape[1])
        over = sides >= floor
        probabilities = model.predict(images[over])
        labels = class_labels([n for n, keep in zip(names, over, strict=True) if keep], "decals", str(folder))
        confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
        print(f"{folder}: {int(over.sum())} galaxies of {floor:g} px or more")
        for threshold in THRESHOLDS:
            kept = confidence >= threshold
            print(f"  threshold {threshold:.1f}: kept {kept.mean():.2f}, accuracy {correct[kept].mean():.3f}")


if __name__ == "__main__":
    main()
