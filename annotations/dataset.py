"""Finding labelImg annotations in a folder and the images they describe.

labelImg saves each XML beside its image by default; Pascal VOC keeps them in
Annotations/ and JPEGImages/; YOLO keeps labels/ beside images/. All three are found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from annotations.images import image_size
from annotations.records import AnnotationError, ImageAnnotation
from annotations.voc import read_voc
from annotations.yolo import CLASSES_FILE, read_classes, read_yolo
from galaxy_edge.files import IMAGE_SUFFIXES

_IMAGE_DIR_NAMES = ("JPEGImages", "images", "Images", "img")
_SAME_IMAGE_TYPES = ({".jpg", ".jpeg"}, {".tif", ".tiff"})


@dataclass
class AnnotatedImage:
    annotation_path: Path
    format: Literal["voc", "yolo"]
    annotation: ImageAnnotation | None = None
    image_path: Path | None = None
    error: AnnotationError | None = None  # the annotation could not be read
    image_problem: str | None = None  # image missing, or named differently on disk


def _image_dirs(annotation_dir: Path) -> list[Path]:
    dirs = [annotation_dir]
    dirs += [annotation_dir.parent / name for name in _IMAGE_DIR_NAMES]
    if annotation_dir.name == "labels":
        dirs.append(annotation_dir.parent / "images")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _same_kind(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a == b or any(a in group and b in group for group in _SAME_IMAGE_TYPES)


def find_image(
    filename: str, annotation_dir: Path, path_field: str | None = None
) -> tuple[Path | None, str | None]:
    """Locate the image an annotation names: (path or None, problem or None).

    A file that differs only by case or by .jpg/.jpeg is returned with a problem, so
    checks can go on with it while the mismatch is still reported.
    """
    dirs = _image_dirs(annotation_dir)
    for directory in dirs:
        candidate = directory / filename
        if candidate.is_file() and candidate.name == filename:
            return candidate, None
    if path_field:
        candidate = Path(path_field)
        if candidate.is_file():
            return candidate, None
    wanted = Path(filename)
    for directory in dirs:
        for candidate in sorted(directory.iterdir()):
            if (
                candidate.is_file()
                and candidate.stem.lower() == wanted.stem.lower()
                and _same_kind(candidate.suffix, wanted.suffix)
            ):
                return candidate, (
                    f"filename '{filename}' in the annotation does not match '{candidate.name}' on disk "
                    "(extension or case mismatch)"
                )
    looked = ", ".join(str(d) for d in dirs)
    return None, f"image '{filename}' named in the annotation not found (looked in {looked})"


def _yolo_image(label_path: Path) -> Path | None:
    for directory in _image_dirs(label_path.parent):
        for suffix in IMAGE_SUFFIXES:
            for variant in (suffix, suffix.upper()):
                candidate = directory / f"{label_path.stem}{variant}"
                if candidate.is_file():
                    return candidate
    return None


def find_annotation_files(root: Path | str) -> list[tuple[Path, Literal["voc", "yolo"]]]:
    """Every VOC XML under root, and every YOLO .txt in a folder that has a classes.txt."""
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(root, "not a folder")
    found: list[tuple[Path, Literal["voc", "yolo"]]] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.suffix.lower() == ".xml":
            found.append((path, "voc"))
        elif path.suffix == ".txt" and path.name != CLASSES_FILE and (path.parent / CLASSES_FILE).is_file():
            found.append((path, "yolo"))
    return found


def load_annotated_image(path: Path, fmt: Literal["voc", "yolo"]) -> AnnotatedImage:
    """Read one annotation and find its image; failures are recorded, not raised."""
    item = AnnotatedImage(annotation_path=path, format=fmt)
    try:
        if fmt == "voc":
            item.annotation = read_voc(path)
            item.image_path, item.image_problem = find_image(
                item.annotation.filename, path.parent, item.annotation.path
            )
        else:
            item.image_path = _yolo_image(path)
            if item.image_path is None:
                item.image_problem = f"no image named '{path.stem}.*' found for this YOLO label file"
                return item
            width, height, depth = image_size(item.image_path)
            classes = read_classes(path.parent / CLASSES_FILE)
            item.annotation = read_yolo(path, classes, width, height, depth, filename=item.image_path.name)
    except AnnotationError as error:
        item.error = error
    return item


def load_dataset(root: Path | str) -> list[AnnotatedImage]:
    """All annotations under root with their images; unreadable ones carry their error."""
    return [load_annotated_image(path, fmt) for path, fmt in find_annotation_files(root)]


def find_images(root: Path | str) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def usable_pairs(root: Path | str) -> list[tuple[Path, ImageAnnotation]]:
    """(image, annotation) pairs that can be trained on; raises on the first unusable one."""
    pairs = []
    for item in load_dataset(root):
        if item.error is not None:
            raise item.error
        if item.image_path is None:
            raise AnnotationError(item.annotation_path, item.image_problem or "image not found")
        pairs.append((item.image_path, item.annotation))
    if not pairs:
        raise AnnotationError(root, "no labelImg annotations (VOC .xml, or YOLO .txt with classes.txt) found")
    return pairs
