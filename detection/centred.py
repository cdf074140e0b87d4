"""Real galaxies at the sizes a wide frame shows them.

The GZ2 set holds real galaxies, each at the centre of its image (the Galaxy Zoo target), but at
424 pixels they are far larger than most galaxies in a camera's wide frame, and nobody has boxed
them. Shrunk 3-8 times and laid in a grid on a frame of a camera's size, they become small real
galaxies at known places: the cell centres. That gives two things no simulated frame gives:

- `evaluate --detector --gz2` checks how many of them a detector keeps (`small_galaxy_recall`, on
  the held-out part of the images);
- `train --verifier --centred-galaxies` learns from them as real galaxies (the training part).

The two parts are fixed by each file's name (`is_held_out`), so a verifier trained on one part is
always checked on the other. Nothing here knows about galaxies beyond "the centre holds one": other
sources in a cell (stars, neighbours) are unlabelled.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from galaxy_edge.errors import GalaxyEdgeError

FRAME_SIZE = (1280, 720)  # width, height: a 720p camera, the size the chain benchmark uses
CHECK_SHRINKS = (4, 6)  # GZ2's central galaxies come out about 20-45 and 15-30 pixels long
TRAIN_SHRINKS = (3, 4, 5, 6, 8)
HELD_OUT_EVERY = 3  # one image in three (by a hash of its name) is kept for the check
# A kept box stands for the cell's galaxy when it contains the cell centre and its longer side spans
# 6-100 % of the cell (the GZ2 central-galaxy check applies it with the whole image as the cell).
SIZE_RANGE = (0.06, 1.0)


def centred_images(folder: Path | str) -> list[Path]:
    """The images of a folder of centred galaxies (the Kaggle layout, labels.csv beside images/,
    or a plain folder of images), sorted by name."""
    from galaxy_edge.files import IMAGE_SUFFIXES

    folder = Path(folder)
    if (folder / "images").is_dir():
        folder = folder / "images"
    if not folder.is_dir():
        raise GalaxyEdgeError(f"{folder}: no such folder of centred galaxy images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise GalaxyEdgeError(f"{folder}: no images")
    return paths


def is_held_out(path: Path) -> bool:
    """Whether an image belongs to the held-out part: fixed by its name, whatever else the folder holds."""
    return zlib.crc32(Path(path).stem.encode()) % HELD_OUT_EVERY == 0


def centred_part(paths: Sequence[Path], held_out: bool) -> list[Path]:
    return [p for p in paths if is_held_out(p) == held_out]


@dataclass
class Mosaic:
    frame: np.ndarray  # BGR uint8, FRAME_SIZE
    centres: np.ndarray  # (N, 2) x, y of each placed image's centre
    cell: int  # pixels per side of each placed image


def mosaics(
    paths: Sequence[Path], shrink: float, frame_size: tuple[int, int] = FRAME_SIZE
) -> Iterator[Mosaic]:
    """Frames of frame_size (width, height) holding the images in a grid from the top left, each
    centre-cropped square and shrunk (area averaging) to cells of the first image's shorter side
    divided by `shrink` (GZ2's images are all 424 pixels); the space the grid leaves is the median
    colour of the placed images, as sky."""
    if shrink <= 0:
        raise GalaxyEdgeError(f"shrink {shrink:g}: the images are shrunk by a factor over 0")
    if not paths:
        return
    first = cv2.imread(str(paths[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise GalaxyEdgeError(f"{paths[0]}: cannot read the image")
    cell = int(min(first.shape[:2]) // shrink)
    width, height = frame_size
    columns, rows = width // cell, height // cell
    if cell < 8 or not columns or not rows:
        raise GalaxyEdgeError(f"{paths[0]}: shrunk {shrink} times it would be {cell} pixels: no mosaic")
    per_frame = columns * rows
    for start in range(0, len(paths), per_frame):
        chunk = paths[start : start + per_frame]
        cells = np.empty((len(chunk), cell, cell, 3), np.uint8)
        for k, path in enumerate(chunk):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise GalaxyEdgeError(f"{path}: cannot read the image")
            side = min(image.shape[:2])
            top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
            square = image[top : top + side, left : left + side]
            cells[k] = cv2.resize(square, (cell, cell), interpolation=cv2.INTER_AREA)
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = np.median(cells.reshape(-1, 3), axis=0).astype(np.uint8)
        row, column = np.divmod(np.arange(len(chunk)), columns)
        for k in range(len(chunk)):
            y, x = row[k] * cell, column[k] * cell
            frame[y : y + cell, x : x + cell] = cells[k]
        centres = np.column_stack([column * cell + cell / 2, row * cell + cell / 2]).astype(np.float32)
        yield Mosaic(frame, centres, cell)


def centre_hits(boxes: np.ndarray, centres: np.ndarray, cell: int) -> np.ndarray:
    """(centres, boxes) bool: the box contains the centre and has a plausible size for its galaxy."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    plausible = (side >= SIZE_RANGE[0] * cell) & (side <= SIZE_RANGE[1] * cell)
    x, y = centres[:, :1], centres[:, 1:]
    inside_x = (boxes[None, :, 0] <= x) & (boxes[None, :, 2] >= x)
    inside_y = (boxes[None, :, 1] <= y) & (boxes[None, :, 3] >= y)
    return inside_x & inside_y & plausible[None, :]


def small_galaxy_recall(
    detector, folder: Path | str, threshold: float, shrinks: Sequence[float] = CHECK_SHRINKS
) -> dict:
    """Real check: the held-out part's galaxies shrunk into mosaics, run as camera frames. Per shrink:
    the fraction of cell centres a kept box stands for (`centre_hits`), and the other kept boxes per
    cell (stars and neighbours as well as false detections: a ceiling, not a count of errors)."""
    from edge.tiling import detect_frame

    paths = centred_part(centred_images(folder), held_out=True)
    if not paths:
        raise GalaxyEdgeError(f"{folder}: no images in the held-out part")
    report: dict = {"images": len(paths), "threshold": threshold, "by_shrink": []}
    for shrink in shrinks:
        galaxies = found_galaxies = boxes_kept = 0
        cell = 0
        for mosaic in mosaics(paths, shrink):
            found = detect_frame(detector, mosaic.frame)
            boxes = found.boxes[found.scores >= threshold]
            hits = centre_hits(boxes, mosaic.centres, mosaic.cell)
            galaxies += len(mosaic.centres)
            found_galaxies += int(hits.any(axis=1).sum())
            boxes_kept += len(boxes)
            cell = mosaic.cell
        report["by_shrink"].append(
            {
                "shrink": shrink,
                "cell": cell,
                "recall": found_galaxies / galaxies,
                "other_per_cell": (boxes_kept - found_galaxies) / galaxies,
            }
        )
    return report
