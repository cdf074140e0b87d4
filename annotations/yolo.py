"""labelImg's YOLO format: one `class x_center y_center width height` line per box
(normalised to the image size, six decimals) and a `classes.txt` beside the labels."""

from __future__ import annotations

import math
from pathlib import Path

from annotations.records import AnnotationError, Box, ImageAnnotation

CLASSES_FILE = "classes.txt"


def read_classes(path: Path | str) -> list[str]:
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text().splitlines()]
    except OSError as error:
        raise AnnotationError(path, f"cannot read class list ({error.strerror})") from None
    names = [n for n in names if n]
    if not names:
        raise AnnotationError(path, "class list is empty")
    return names


def write_classes(path: Path | str, classes: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in classes))
    return path


def read_yolo(
    path: Path | str, classes: list[str], width: int, height: int, depth: int = 3, filename: str = ""
) -> ImageAnnotation:
    """Read a YOLO label file for an image of the given size, as labelImg does (rounded pixels)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(path, f"cannot read label file ({error})") from None
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise AnnotationError(path, f"line {number}: expected 5 fields, found {len(fields)}")
        try:
            index = int(fields[0])
            xc, yc, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise AnnotationError(path, f"line {number}: not numbers ({line.strip()!r})") from None
        if not all(math.isfinite(v) for v in (xc, yc, w, h)):
            raise AnnotationError(path, f"line {number}: values are not finite")
        if not 0 <= index < len(classes):
            raise AnnotationError(
                path, f"line {number}: class index {index} outside {CLASSES_FILE} (0..{len(classes) - 1})"
            )
        boxes.append(
            Box(
                name=classes[index],
                xmin=round((xc - w / 2) * width),
                ymin=round((yc - h / 2) * height),
                xmax=round((xc + w / 2) * width),
                ymax=round((yc + h / 2) * height),
            )
        )
    return ImageAnnotation(
        filename=filename or path.stem, width=width, height=height, depth=depth, boxes=boxes, source_file=path
    )


def yolo_text(annotation: ImageAnnotation, classes: list[str]) -> str:
    """The label file text; box names missing from `classes` are appended to it, as labelImg does."""
    lines = []
    for box in annotation.boxes:
        if box.name not in classes:
            classes.append(box.name)
        xc = (box.xmin + box.xmax) / 2 / annotation.width
        yc = (box.ymin + box.ymax) / 2 / annotation.height
        w = box.width / annotation.width
        h = box.height / annotation.height
        lines.append(f"{classes.index(box.name)} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def write_yolo(annotation: ImageAnnotation, path: Path | str, classes: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yolo_text(annotation, classes))
    return path
