"""The real Galaxy Zoo 2 images in ../shared/data/gz2_kaggle_1400, cut as Galaxy10 SDSS was:
centre crop 207x207 of the 424x424 image, downsampled by 3 to 69x69 (area averaging)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxy_edge.errors import GalaxyEdgeError

DEFAULT_GZ2_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gz2_kaggle_1400"
CROP = 207
SIZE = 69


@dataclass
class GZ2Set:
    images: np.ndarray  # (N, 69, 69, 3) uint8
    spiral: np.ndarray  # (N,) 0/1
    galaxy_ids: list[str]
    top_answer: list[str]


def galaxy10_sdss_cutout(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Centre crop 207x207 and downsample to size x size by area averaging (Galaxy10 SDSS recipe)."""
    from PIL import Image

    height, width = image.shape[:2]
    top, left = (height - CROP) // 2, (width - CROP) // 2
    crop = image[top : top + CROP, left : left + CROP]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BOX))


def load_gz2(root: Path | str = DEFAULT_GZ2_DIR, limit: int | None = None, size: int = SIZE) -> GZ2Set:
    """The GZ2 images in labels.csv order with their `spiral` labels."""
    from PIL import Image

    root = Path(root)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise GalaxyEdgeError(f"{labels}: not found (the GZ2 images live in ../shared/data/gz2_kaggle_1400)")
    with labels.open() as f:
        rows = list(csv.DictReader(f))[:limit]
    images = np.zeros((len(rows), size, size, 3), np.uint8)
    for i, row in enumerate(rows):
        path = root / "images" / f"{row['galaxy_id']}.jpg"
        try:
            with Image.open(path) as image:
                images[i] = galaxy10_sdss_cutout(np.asarray(image.convert("RGB")), size)
        except OSError as error:
            raise GalaxyEdgeError(f"{path}: image unreadable ({error})") from None
    return GZ2Set(
        images=images,
        spiral=np.array([int(r["spiral"]) for r in rows], np.uint8),
        galaxy_ids=[r["galaxy_id"] for r in rows],
        top_answer=[r["top_answer_name"] for r in rows],
    )


def weak_training_half(galaxy_ids: list[str]) -> np.ndarray:
    """(N,) bool: the half of the GZ2 images that training may use as weakly labelled data.

    Fixed by a hash of the galaxy id, so the other half stays held out for the real-data check
    in every run, whatever the order or subset of the images.
    """
    import hashlib

    return np.array([hashlib.sha1(g.encode()).digest()[0] % 2 == 0 for g in galaxy_ids], bool)
