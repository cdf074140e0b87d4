"""Deterministic train/val/test split of a labelImg folder, stratified by class.

Each image is stratified by the rarest class it contains (so rare classes reach every
split) and ordered inside its stratum by a hash of its name and the seed: the split
does not depend on file-system order, and adding images moves few existing ones.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from annotations.dataset import usable_pairs
from annotations.records import ImageAnnotation
from galaxy_edge.errors import GalaxyEdgeError

SPLIT_NAMES = ("train", "val", "test")
BACKGROUND = "(no boxes)"


@dataclass
class Split:
    files: dict[str, list[Path]]
    class_counts: dict[str, Counter]


def _rarest_class(annotation: ImageAnnotation, totals: Counter) -> str:
    names = {box.name for box in annotation.boxes}
    if not names:
        return BACKGROUND
    return min(names, key=lambda n: (totals[n], n))


def _order_key(path: Path, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{path.name}".encode()).hexdigest()


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Counts per split summing to n, by largest remainder."""
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_pairs(
    pairs: Sequence[tuple[Path, ImageAnnotation]], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise GalaxyEdgeError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    totals = Counter(box.name for _, ann in pairs for box in ann.boxes)
    strata: dict[str, list[tuple[Path, ImageAnnotation]]] = defaultdict(list)
    for image, ann in pairs:
        strata[_rarest_class(ann, totals)].append((image, ann))
    files: dict[str, list[Path]] = {name: [] for name in SPLIT_NAMES}
    counts: dict[str, Counter] = {name: Counter() for name in SPLIT_NAMES}
    for stratum in sorted(strata):
        members = sorted(strata[stratum], key=lambda pair: _order_key(pair[0], seed))
        start = 0
        for name, count in zip(SPLIT_NAMES, _allocate(len(members), fractions), strict=True):
            for image, ann in members[start : start + count]:
                files[name].append(image)
                counts[name].update(box.name for box in ann.boxes)
            start += count
    for name in SPLIT_NAMES:
        files[name].sort()
    return Split(files=files, class_counts=counts)


def split_dataset(
    root: Path | str,
    out: Path | str | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[Split, dict[str, Path]]:
    """Split a labelImg folder and write train.txt / val.txt / test.txt (image paths
    relative to the list file's folder, the Ultralytics convention)."""
    root = Path(root)
    out = Path(out) if out is not None else root / "splits"
    split = split_pairs(usable_pairs(root), fractions, seed)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, images in split.files.items():
        target = out / f"{name}.txt"
        target.write_text("".join(f"{Path(os.path.relpath(p, out)).as_posix()}\n" for p in images))
        written[name] = target
    return split, written


def read_split_list(path: Path | str) -> list[Path]:
    """Image paths from a list file written by split_dataset (relative to the file's folder)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise GalaxyEdgeError(f"{path}: cannot read split list ({error.strerror})") from None
    return [(path.parent / line.strip()).resolve() for line in lines if line.strip()]
