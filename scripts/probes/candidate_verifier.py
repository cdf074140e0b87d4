"""Ad hoc probe (docs/detector.md): a second look at the detector's candidates. The
shipped detector ranks small galaxies like the stars around them (scripts/probes/ranking_losses.py);
a tiny CNN that sees each candidate's own pixels at native scale (a 32-pixel patch, or 1.5x the box
shrunk to 32) with the detector's score and box size re-scores it, trained on the detector's own
candidates on frames it never saw.

  python scripts/probes/candidate_verifier.py harvest MODEL FRAMES OUT.npz
  python scripts/probes/candidate_verifier.py train HARVEST.npz OUT.keras [--epochs N]
  python scripts/probes/candidate_verifier.py evaluate MODEL VERIFIER.keras FRAMES OUT [--max-side S]

evaluate: `evaluate --detector` with each candidate whose longer side is under S (default: all)
re-scored by the verifier.

The runtime's version is `galaxy-edge train --verifier` (detection/verifier.py); this probe differs in
its patches (sub-pixel, cv2.warpAffine) and trains on every candidate. Its network is now
detection.verifier.build_verifier, whose last hidden ReLU is bounded at 6 (the probe figures of
docs/verifier.md were measured with an unbounded one; otherwise the same layers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

PATCH = 32  # native pixels: covers the galaxies the detector loses (under 16-32 pixels) with context
SCORE_FLOOR = 0.05


def patches_for(frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """A square patch per box, side max(PATCH, 1.5 x the longer side), centred, shrunk to PATCH."""
    out = np.empty((len(boxes), PATCH, PATCH, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        side = max(PATCH, 1.5 * max(x2 - x1, y2 - y1))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        scale = PATCH / side
        # An affine warp samples the patch (with border replication) in one call.
        matrix = np.array(
            [[scale, 0, PATCH / 2 - scale * cx], [0, scale, PATCH / 2 - scale * cy]], np.float32
        )
        flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        out[i] = cv2.warpAffine(frame, matrix, (PATCH, PATCH), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return out


def scalar_features(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    from edge.models import candidate_priors

    return candidate_priors(boxes, scores)


def harvest(model: Path, frames: Path, out: Path) -> None:
    from annotations.dataset import usable_pairs
    from edge.models import Detector
    from edge.tiling import detect_frame
    from edge.tracking import iou_matrix

    detector = Detector(model, verify=False)
    detector.score_threshold = SCORE_FLOOR
    all_patches, all_features, all_labels, all_frames = [], [], [], []
    pairs = usable_pairs(frames)
    for index, (image_path, annotation) in enumerate(pairs):
        frame = cv2.imread(str(image_path))
        found = detect_frame(detector, frame)
        if not len(found):
            continue
        boxes = [b for b in annotation.boxes if b.name == "galaxy"]
        truth = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in boxes], np.float32).reshape(-1, 4)
        difficult = np.array([b.difficult for b in boxes], bool)
        overlaps = iou_matrix(found.boxes, truth) if len(truth) else np.zeros((len(found), 0))
        label = np.zeros(len(found), np.int8)
        if overlaps.shape[1]:
            best = overlaps.argmax(axis=1)
            matched = overlaps.max(axis=1) >= 0.5
            label[matched & ~difficult[best]] = 1
            label[matched & difficult[best]] = -1
        all_patches.append(patches_for(frame, found.boxes))
        all_features.append(scalar_features(found.boxes, found.scores))
        all_labels.append(label)
        all_frames.append(np.full(len(found), index, np.int32))
        if index % 50 == 0:
            print(f"{index}/{len(pairs)} frames, {sum(map(len, all_labels))} candidates", flush=True)
    np.savez_compressed(
        out,
        patches=np.concatenate(all_patches),
        features=np.concatenate(all_features),
        labels=np.concatenate(all_labels),
        frames=np.concatenate(all_frames),
    )


def train(harvest_path: Path, out: Path, epochs: int) -> None:
    import keras

    data = np.load(harvest_path)
    keep = data["labels"] >= 0
    patches, features, labels = data["patches"][keep], data["features"][keep], data["labels"][keep]
    frames = data["frames"][keep]
    validation = frames % 10 == 0
    print(f"{len(labels)} candidates, {labels.mean():.3f} galaxies; {validation.sum()} for validation")
    from detection.verifier import build_verifier

    model = build_verifier(PATCH)
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
    )
    rng = np.random.default_rng(0)

    def batches(index: np.ndarray, size: int = 256):
        while True:
            order = rng.permutation(index)
            for start in range(0, len(order) - size + 1, size):
                take = order[start : start + size]
                views = patches[take]
                turn = rng.integers(4)
                views = np.rot90(views, turn, axes=(1, 2))
                if rng.random() < 0.5:
                    views = views[:, :, ::-1]
                yield (np.ascontiguousarray(views), features[take]), labels[take].astype(np.float32)

    fit_index = np.flatnonzero(~validation)
    steps = len(fit_index) // 256
    model.fit(
        batches(fit_index),
        steps_per_epoch=steps,
        epochs=epochs,
        validation_data=((patches[validation], features[validation]), labels[validation].astype(np.float32)),
        callbacks=[keras.callbacks.ModelCheckpoint(out, monitor="val_loss", save_best_only=True)],
        verbose=2,
    )


def evaluate(
    model: Path, verifier_path: Path, frames: Path, out: Path, max_side: float, gz2: bool, max_candidates: int
) -> None:
    import keras

    import detection.evaluate as evaluation
    from edge.tiling import detect_frame as runtime_detect_frame

    verifier = keras.models.load_model(verifier_path)

    def detect_frame(detector, frame: np.ndarray):
        found = runtime_detect_frame(detector, frame)
        if not len(found):
            return found
        sides = np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
        chosen = np.flatnonzero(sides < max_side)
        chosen = chosen[np.argsort(-found.scores[chosen], kind="stable")[:max_candidates]]
        if len(chosen):
            logits = verifier.predict(
                (
                    patches_for(frame, found.boxes[chosen]),
                    scalar_features(found.boxes[chosen], found.scores[chosen]),
                ),
                verbose=0,
                batch_size=1024,
            ).reshape(-1)
            found.scores[chosen] = 1 / (1 + np.exp(-logits))
        return found

    evaluation.detect_frame = detect_frame
    gz2_folder = Path("../shared/data/gz2_kaggle_1400") if gz2 else None
    report = evaluation.evaluate_detector(model, frames, out, gz2=gz2_folder, draw=0, verify=False)
    coco = report["coco"]
    recall = ", ".join(f"{row['size']} {row['recall']:.2f}" for row in report["recall_by_size"])
    print(
        f"{frames}: mAP@0.5 {coco['map50']:.4f}, mAP@0.5:0.95 {coco['map']:.4f}, AR@100 {coco['ar100']:.3f}"
    )
    print(f"  recall at the card's threshold by size: {recall}")
    if "gz2_central" in report:
        central = report["gz2_central"]
        print(
            f"  GZ2 central recall {central['recall']:.4f}, {central['other_per_image']:.2f} other per image"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("harvest")
    p.add_argument("model", type=Path)
    p.add_argument("frames", type=Path)
    p.add_argument("out", type=Path)
    p = verbs.add_parser("train")
    p.add_argument("harvest", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=8)
    p = verbs.add_parser("evaluate")
    p.add_argument("model", type=Path)
    p.add_argument("verifier", type=Path)
    p.add_argument("frames", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--max-side", type=float, default=1e9)
    p.add_argument("--gz2", action="store_true")
    p.add_argument("--max-candidates", type=int, default=512)
    args = parser.parse_args()
    if args.verb == "harvest":
        harvest(args.model, args.frames, args.out)
    elif args.verb == "train":
        train(args.harvest, args.out, args.epochs)
    else:
        evaluate(
            args.model, args.verifier, args.frames, args.out, args.max_side, args.gz2, args.max_candidates
        )


if __name__ == "__main__":
    main()
