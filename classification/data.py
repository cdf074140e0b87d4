"""Galaxy10 data: astroNN's .h5 layout (SDSS and DECaLS), class folders, the real GZ2 images,
the galaxies of simulated frames cut as the chain cuts them, and stratified splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxy_edge.errors import GalaxyEdgeError
from galaxy_edge.files import IMAGE_SUFFIXES
from galaxy_edge.schemes import get_scheme

SIZE_TO_SCHEME = {69: "sdss", 256: "decals"}
CHUNK = 512  # images resized per read, to bound memory on the 3.5 GB DECaLS file


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int
    scheme: str
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.scheme, self.source)

    def counts(self) -> dict[str, int]:
        names = get_scheme(self.scheme).names
        return {names[i]: int((self.labels == i).sum()) for i in range(len(names))}


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged resize of (N, H, W, 3) uint8 images to size x size (Galaxy10's recipe)."""
    import cv2

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return out


def load_h5(
    path: Path | str, size: int | None = None, scheme: str | None = None, limit: int | None = None
) -> ImageSet:
    """A Galaxy10 .h5 file (astroNN layout: `images` uint8 (N, H, W, 3), `ans` (N,)), resized to
    size x size when given. The scheme comes from the argument, the file's `scheme` attribute,
    or the image size (69: SDSS, 256: DECaLS)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise GalaxyEdgeError(f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise GalaxyEdgeError(f"{path}: not a readable HDF5 file ({error})") from None
    with handle:
        if "images" not in handle or "ans" not in handle:
            raise GalaxyEdgeError(
                f"{path}: expected datasets 'images' and 'ans' (astroNN Galaxy10 layout), "
                f"found {sorted(handle)}"
            )
        dataset, answers = handle["images"], handle["ans"]
        if dataset.ndim != 4 or dataset.shape[3] != 3 or len(answers) != dataset.shape[0]:
            raise GalaxyEdgeError(
                f"{path}: 'images' must be (N, H, W, 3) with one 'ans' each, "
                f"found {dataset.shape} and {answers.shape}"
            )
        attribute = handle.attrs.get("scheme")
        scheme = scheme or (attribute.decode() if isinstance(attribute, bytes) else attribute)
        scheme = scheme or SIZE_TO_SCHEME.get(dataset.shape[1])
        if scheme is None:
            raise GalaxyEdgeError(
                f"{path}: cannot tell the class scheme from {dataset.shape[1]}-pixel images; "
                "pass --scheme decals or sdss"
            )
        count = min(limit or len(answers), len(answers))
        target = size or dataset.shape[1]
        images = np.empty((count, target, target, 3), np.uint8)
        for start in range(0, count, CHUNK):
            stop = min(start + CHUNK, count)
            images[start:stop] = resize_images(np.asarray(dataset[start:stop], np.uint8), target)
        labels = np.asarray(answers[:count]).astype(np.int64)
    classes = get_scheme(scheme).num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise GalaxyEdgeError(f"{path}: labels outside 0..{classes - 1} for scheme {scheme}")
    return ImageSet(images, labels, scheme, str(path))


def load_folders(root: Path | str, scheme: str, size: int) -> ImageSet:
    """One folder per class, named by the scheme's class names (as `simulate stamps --format png` writes)."""
    from PIL import Image

    root = Path(root)
    classes = get_scheme(scheme)
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in classes.names)
    if unknown:
        raise GalaxyEdgeError(
            f"{root}: folders {unknown} are not {scheme} class names ({', '.join(classes.names)})"
        )
    images, labels = [], []
    for index, name in enumerate(classes.names):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    array = np.asarray(image.convert("RGB"))
            except OSError as error:
                raise GalaxyEdgeError(f"{path}: image unreadable ({error})") from None
            images.append(resize_images(array[None], size)[0])
            labels.append(index)
    if not images:
        raise GalaxyEdgeError(f"{root}: no images in class folders")
    return ImageSet(np.stack(images), np.array(labels, np.int64), scheme, str(root))


def load_dataset(path: Path | str, size: int, scheme: str | None = None) -> ImageSet:
    """An .h5 file or a folder of class folders."""
    path = Path(path)
    if path.is_dir():
        return load_folders(path, scheme or "decals", size)
    return load_h5(path, size, scheme)


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices, stratified by class (classes too rare to split go to train)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * fractions[1])
        n_test = round(len(members) * fractions[2])
        parts[1] += members[:n_val].tolist()
        parts[2] += members[n_val : n_val + n_test].tolist()
        parts[0] += members[n_val + n_test :].tolist()
    return tuple(np.array(sorted(p), np.int64) for p in parts)  # type: ignore[return-value]


def frame_galaxy_crops(folder: Path, size: int, crop_scale: float | None = None):
    """The galaxies of simulated frames (`simulate frames` writes truth.csv with each one's class),
    cut as the chain cuts a detection (edge.chain.square_crop of the true box) and resized as the
    runtime resizes: (RGB images (N, size, size, 3), class names, box longer sides, S/N). Galaxies
    marked difficult or cut by the frame edge are left out, as the detector's evaluation does."""
    import csv

    import cv2

    from edge.chain import ChainSettings, square_crop
    from edge.models import Classifier, resize_like_runtime

    crop_scale = ChainSettings.crop_scale if crop_scale is None else crop_scale
    truth = Path(folder) / "truth.csv"
    if not truth.is_file():
        raise GalaxyEdgeError(f"{truth}: not found (--frames takes a folder from `simulate frames`)")
    by_frame: dict[str, list[dict]] = {}
    needed = {"frame", "kind", "class_name", "xmin", "ymin", "xmax", "ymax", "snr", "difficult", "truncated"}
    with truth.open() as f:
        reader = csv.DictReader(f)
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise GalaxyEdgeError(f"{truth}: no column {', '.join(sorted(missing))}")
        for row in reader:
            if row["kind"] == "galaxy" and row["difficult"] == "0" and row["truncated"] == "0":
                by_frame.setdefault(row["frame"], []).append(row)
    images, names, sides, snrs = [], [], [], []
    for frame, rows in sorted(by_frame.items()):
        path = Path(folder) / f"{frame}.jpg"
        image = cv2.imread(str(path))
        if image is None:
            raise GalaxyEdgeError(f"{path}: cannot read the frame")
        for row in rows:
            box = np.array([float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
            crop = square_crop(image, box, crop_scale)
            crop = resize_like_runtime(crop, size, size, exact_shrink=Classifier.exact_shrink)
            images.append(crop[..., ::-1])
            names.append(row["class_name"])
            sides.append(max(box[2] - box[0], box[3] - box[1]))
            snrs.append(float(row["snr"]))
    if not images:
        raise GalaxyEdgeError(f"{truth}: no galaxy that is neither difficult nor cut by the frame edge")
    return np.array(images, np.uint8).reshape(-1, size, size, 3), names, np.array(sides), np.array(snrs)


def frame_galaxies(folder: Path | str, size: int, scheme: str = "decals", min_side: float = 0.0) -> ImageSet:
    """The galaxies of simulated frames as a labelled set, cut as the chain cuts them (see
    frame_galaxy_crops): the classifier's job in the chain, to train on beside the stamps. Those whose
    box's longer side is under min_side are left out (the chain does not classify them)."""
    images, names, sides, _ = frame_galaxy_crops(Path(folder), size)
    kept = np.flatnonzero(sides >= min_side)
    if not len(kept):
        raise GalaxyEdgeError(f"{folder}: no frame galaxy of {min_side:g} pixels or more")
    labels = class_labels([names[i] for i in kept], scheme, str(folder))
    return ImageSet(images[kept], labels, scheme, f"{folder} (frame galaxies)")


def class_labels(names: list[str], scheme: str, where: str) -> np.ndarray:
    """The scheme's class indices of class names; names outside the scheme are named with `where`."""
    class_names = list(get_scheme(scheme).names)
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise GalaxyEdgeError(f"{where}: frame classes {unknown} are not in the {scheme} scheme")
    return np.array([class_names.index(n) for n in names], np.int64)


def join(sets: list[ImageSet]) -> ImageSet:
    """One set of several of one scheme; its source names them all."""
    schemes = {s.scheme for s in sets}
    if len(schemes) != 1:
        raise GalaxyEdgeError(f"cannot join sets of the schemes {sorted(schemes)}")
    return ImageSet(
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.labels for s in sets]),
        sets[0].scheme,
        " + ".join(dict.fromkeys(s.source for s in sets)),
    )
