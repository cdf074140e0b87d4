"""Ad hoc probe (docs/detector.md): where a detector's ranking loses on a `simulate frames`
folder. Each box at score 0.05 that matches no galaxy at IoU 0.5 is named by the truth object under
its centre (star, difficult galaxy, a galaxy with a poor box, blank sky); the galaxies under 16
pixels are broken down by size against the seeing and by S/N.

  python scripts/probes/ranking_losses.py MODEL FRAMES
"""

from __future__ import annotations

import csv
import itertools
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from edge.models import Detector
from edge.tiling import detect_frame
from edge.tracking import iou_matrix


def _what_is_under(box: np.ndarray, objects: list[dict]) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    reach = max(4.0, max(box[2] - box[0], box[3] - box[1]) / 2)
    near = [o for o in objects if np.hypot(float(o["x"]) - cx, float(o["y"]) - cy) <= reach]
    if not near:
        return "blank sky"
    nearest = min(
        near, key=lambda o: (o["kind"] != "galaxy", np.hypot(float(o["x"]) - cx, float(o["y"]) - cy))
    )
    if nearest["kind"] == "star":
        return "star"
    return "difficult galaxy" if nearest["difficult"] == "1" else "galaxy, IoU under 0.5"


def main() -> None:
    detector, folder = Detector(Path(sys.argv[1]), verify=False), Path(sys.argv[2])
    detector.score_threshold = 0.05
    by_frame = defaultdict(list)
    with (folder / "truth.csv").open() as f:
        for row in csv.DictReader(f):
            by_frame[row["frame"]].append(row)
    unmatched, scores, small, true_scores = Counter(), defaultdict(list), [], []
    for frame, objects in sorted(by_frame.items()):
        found = detect_frame(detector, cv2.imread(str(folder / f"{frame}.jpg")))
        galaxies = [o for o in objects if o["kind"] == "galaxy" and o["difficult"] == "0"]
        truth = np.array([[float(o[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in galaxies]).reshape(
            -1, 4
        )
        overlaps = iou_matrix(found.boxes, truth) if len(truth) else np.zeros((len(found), 0))
        best = np.zeros(len(galaxies))
        for i, (box, score) in enumerate(zip(found.boxes, found.scores, strict=True)):
            if overlaps.shape[1] and overlaps[i].max() >= 0.5:
                k = int(overlaps[i].argmax())
                best[k] = max(best[k], score)
                true_scores.append(score)
            else:
                kind = _what_is_under(box, objects)
                unmatched[kind] += 1
                scores[kind].append(score)
        for galaxy, score in zip(galaxies, best, strict=True):
            side = max(
                float(galaxy["xmax"]) - float(galaxy["xmin"]), float(galaxy["ymax"]) - float(galaxy["ymin"])
            )
            if side < 16:
                small.append((score, float(galaxy["hlr"]) / float(galaxy["psf_fwhm"]), float(galaxy["snr"])))
    print("unmatched boxes at score >= 0.05, by what lies under their centre:")
    for kind, count in unmatched.most_common():
        s = np.array(scores[kind])
        print(f"  {kind}: {count} ({(s >= 0.2).sum()} at >= 0.2, {(s >= 0.35).sum()} at >= 0.35)")
    true_scores = np.array(true_scores)
    print(f"true positives: {len(true_scores)}, {(true_scores >= 0.35).sum()} at >= 0.35")
    small = np.array(small).reshape(-1, 3)
    print(
        f"galaxies under 16 px: {len(small)}; a box at IoU 0.5 at any score {(small[:, 0] > 0).mean():.2f}, "
        f"at >= 0.35 {(small[:, 0] >= 0.35).mean():.2f}"
    )
    for column, name, edges in (
        (1, "hlr / PSF FWHM", (0.5, 0.75, 1.0, 1.5, 9)),
        (2, "S/N", (10, 20, 40, 100, 1e9)),
    ):
        for low, high in itertools.pairwise(edges):
            inside = (small[:, column] >= low) & (small[:, column] < high)
            if inside.any():
                print(
                    f"  {name} {low:g}-{high:g}: {inside.sum()}, found at any score "
                    f"{(small[inside, 0] > 0).mean():.2f}, at >= 0.35 {(small[inside, 0] >= 0.35).mean():.2f}"
                )


if __name__ == "__main__":
    main()
