"""Ad hoc probe (docs/detector.md): why the shipped detector misses the galaxies it misses.
Every galaxy that is not `difficult` in a `simulate frames` folder's truth.csv gets one cause, by the
detections (every candidate, verified scores, as `evaluate --detector` keeps them) around it:

  found          a box at IoU 0.5 or more with score 0.35 or more
  ranked low     a box at IoU 0.5 or more, but only under 0.35
  box too big / box too small
                 the best box (IoU 0.3-0.5) is larger / smaller in area than the truth
  fragment       no box at IoU 0.3, but a box whose centre lies inside the truth box covers a
                 tenth of it or less (pieces of a large galaxy)
  merged         no box at IoU 0.3, but a box at least three times the truth box's area contains
                 its centre (several galaxies, or a galaxy and its neighbours, in one box)
  nothing        none of these

by the truth box's longer side and by S/N, with the median surface brightness of each cause. Then
every detection at 0.35 or more that no galaxy claims, by its box's longer side and what it lies on
(fp_kind_of), the highest scores first:

  duplicate      IoU 0.5 or more with a galaxy a higher-scored box already claimed
  difficult      IoU 0.5 or more with a `difficult` galaxy (COCO ignores these: not counted wrong)
  galaxy, poor box
                 IoU 0.3-0.5 with a galaxy
  piece of a galaxy
                 its centre inside a galaxy's box, at most half that box's area
  several galaxies
                 its box holds the centres of two galaxies or more
  star           IoU 0.3 or more with a star
  nothing        none of these (noise, a star's halo or spike, a galaxy's outskirts)

  PYTHONPATH=. python scripts/probes/miss_causes.py MODEL.tflite FRAMES [--frames N]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from detection.evaluate import SIZE_BINS_PX, map_threshold, open_detector
from edge.tiling import detect_frame
from edge.tracking import iou_matrix

FINAL_THRESHOLD = 0.35
CAUSES = ("found", "ranked low", "box too big", "box too small", "fragment", "merged", "nothing")
SNR_BINS = (10, 30, 100, 1000)


def cause_of(truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> str:
    if len(boxes) == 0:
        return "nothing"
    iou = iou_matrix(truth[None, :], boxes)[0]
    good = iou >= 0.5
    if (good & (scores >= FINAL_THRESHOLD)).any():
        return "found"
    if good.any():
        return "ranked low"
    best = int(np.argmax(iou))
    area = lambda b: max(b[2] - b[0], 1e-6) * max(b[3] - b[1], 1e-6)  # noqa: E731
    if iou[best] >= 0.3:
        return "box too big" if area(boxes[best]) > area(truth) else "box too small"
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx >= truth[0]) & (cx <= truth[2]) & (cy >= truth[1]) & (cy <= truth[3])
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    if (inside & (areas <= 0.1 * area(truth))).any():
        return "fragment"
    tx, ty = (truth[0] + truth[2]) / 2, (truth[1] + truth[3]) / 2
    contains = (boxes[:, 0] <= tx) & (boxes[:, 2] >= tx) & (boxes[:, 1] <= ty) & (boxes[:, 3] >= ty)
    if (contains & (areas >= 3 * area(truth))).any():
        return "merged"
    return "nothing"


FP_KINDS = (
    "duplicate",
    "difficult",
    "galaxy, poor box",
    "piece of a galaxy",
    "several galaxies",
    "star",
    "nothing",
)


def box_of(row: dict) -> np.ndarray:
    return np.array([float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")], np.float32)


def false_positive_kinds(rows: list[dict], boxes: np.ndarray, scores: np.ndarray) -> list[tuple[int, str]]:
    """(index, kind) of each detection at FINAL_THRESHOLD or more that no galaxy claims, greedily by
    score as COCO matches (truth.csv rows of one frame, every kind)."""
    galaxies = [row for row in rows if row["kind"] == "galaxy"]
    galaxy_boxes = np.array([box_of(row) for row in galaxies], np.float32).reshape(-1, 4)
    difficult = np.array([row["difficult"] == "1" for row in galaxies], bool)
    star_boxes = np.array([box_of(row) for row in rows if row["kind"] == "star"], np.float32).reshape(-1, 4)
    claimed = np.zeros(len(galaxies), bool)
    kinds = []
    for index in np.argsort(-scores, kind="stable"):
        if scores[index] < FINAL_THRESHOLD:
            break
        box = boxes[index]
        iou = iou_matrix(box[None], galaxy_boxes)[0] if len(galaxies) else np.zeros(0)
        free = (iou >= 0.5) & ~claimed & ~difficult
        if free.any():
            claimed[np.flatnonzero(free)[np.argmax(iou[free])]] = True
            continue
        kinds.append((int(index), fp_kind_of(box, iou, galaxy_boxes, difficult, claimed, star_boxes)))
    return kinds


def fp_kind_of(
    box: np.ndarray,
    iou: np.ndarray,
    galaxy_boxes: np.ndarray,
    difficult: np.ndarray,
    claimed: np.ndarray,
    star_boxes: np.ndarray,
) -> str:
    if ((iou >= 0.5) & claimed).any():
        return "duplicate"
    if ((iou >= 0.5) & difficult).any():
        return "difficult"
    if (iou >= 0.3).any():
        return "galaxy, poor box"
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    g = galaxy_boxes
    inside = (g[:, 0] <= cx) & (cx <= g[:, 2]) & (g[:, 1] <= cy) & (cy <= g[:, 3])
    area = (box[2] - box[0]) * (box[3] - box[1])
    if (inside & (area <= 0.5 * (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]))).any():
        return "piece of a galaxy"
    gx, gy = (g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2
    if ((box[0] <= gx) & (gx <= box[2]) & (box[1] <= gy) & (gy <= box[3])).sum() >= 2:
        return "several galaxies"
    if len(star_boxes) and iou_matrix(box[None], star_boxes)[0].max() >= 0.3:
        return "star"
    return "nothing"


def all_truth(frames: Path) -> dict[str, list[dict]]:
    """Every truth.csv row (galaxies, difficult ones too, and stars), by frame."""
    rows = defaultdict(list)
    with open(frames / "truth.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows[row["frame"]].append(row)
    return rows


def galaxy_truth(frames: Path) -> dict[str, list[dict]]:
    """The simulation's truth.csv rows of the galaxies that are not `difficult`, by frame."""
    galaxies = {
        frame: [row for row in rows if row["kind"] == "galaxy" and row["difficult"] == "0"]
        for frame, rows in all_truth(frames).items()
    }
    return {frame: rows for frame, rows in galaxies.items() if rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--frames", dest="count", type=int, default=None, help="only the first N frames")
    args = parser.parse_args()
    rows = galaxy_truth(args.frames)
    everything = all_truth(args.frames)
    names = sorted(rows)[: args.count]
    by_size, by_snr = defaultdict(Counter), defaultdict(Counter)
    false_by_size = defaultdict(Counter)
    brightness = defaultdict(list)
    with tempfile.TemporaryDirectory() as workdir:
        detector = open_detector(args.model, Path(workdir))
        detector.score_threshold = map_threshold(detector)
        for name in names:
            path = next(args.frames.glob(f"{name}.*[gp]"))
            found = detect_frame(detector, cv2.imread(str(path), cv2.IMREAD_COLOR))
            for index, kind in false_positive_kinds(everything[name], found.boxes, found.scores):
                box = found.boxes[index]
                side = max(box[2] - box[0], box[3] - box[1])
                false_by_size[int(np.searchsorted(SIZE_BINS_PX, side, side="right")) - 1][kind] += 1
            for row in rows[name]:
                truth = box_of(row)
                cause = cause_of(truth, found.boxes, found.scores)
                side = max(truth[2] - truth[0], truth[3] - truth[1])
                size_bin = int(np.searchsorted(SIZE_BINS_PX, side, side="right")) - 1
                snr_bin = int(np.searchsorted(SNR_BINS, float(row["snr"]), side="right"))
                by_size[size_bin][cause] += 1
                by_snr[snr_bin][cause] += 1
                hlr = float(row["hlr"])
                brightness[cause].append(float(row["flux"]) / (2 * np.pi * hlr**2))
    print(f"{len(names)} frames; shares of each row's galaxies")
    print("longer side | galaxies | " + " | ".join(CAUSES))
    edges = [*SIZE_BINS_PX, None]
    for k in sorted(by_size):
        counts = by_size[k]
        total = sum(counts.values())
        label = f"{edges[k]}-{edges[k + 1]} px" if edges[k + 1] else f">={edges[k]} px"
        print(f"{label} | {total} | " + " | ".join(f"{counts[c] / total:.3f}" for c in CAUSES))
    print("S/N | galaxies | " + " | ".join(CAUSES))
    snr_labels = ["10-30", "30-100", "100-1000", ">=1000"]
    for k in sorted(by_snr):
        counts = by_snr[k]
        total = sum(counts.values())
        print(f"{snr_labels[k - 1]} | {total} | " + " | ".join(f"{counts[c] / total:.3f}" for c in CAUSES))
    print(f"detections at {FINAL_THRESHOLD} or more that no galaxy claims, by their longer side")
    print("longer side | count | " + " | ".join(FP_KINDS))
    for k in sorted(false_by_size):
        counts = false_by_size[k]
        label = f"{edges[k]}-{edges[k + 1]} px" if edges[k + 1] else f">={edges[k]} px"
        print(f"{label} | {sum(counts.values())} | " + " | ".join(str(counts[c]) for c in FP_KINDS))
    print("median mean surface brightness (sky sigma) by cause:")
    for cause in CAUSES:
        if brightness[cause]:
            print(f"  {cause}: {np.median(brightness[cause]):.2f} ({len(brightness[cause])})")


if __name__ == "__main__":
    main()
