"""Converting a labelImg folder between VOC XML, labelImg YOLO txt and COCO JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from annotations.coco import write_coco
from annotations.dataset import usable_pairs
from annotations.voc import write_voc
from annotations.yolo import CLASSES_FILE, write_classes, write_yolo

Format = Literal["voc", "yolo", "coco"]


def convert_dataset(
    src: Path | str, to: Format, out: Path | str, classes: list[str] | None = None
) -> list[Path]:
    """Write every annotation under src in format `to` into out; returns the files written.

    Class order for YOLO and COCO is `classes` when given, otherwise sorted names.
    """
    pairs = usable_pairs(src)
    out = Path(out)
    names = list(classes) if classes else sorted({b.name for _, ann in pairs for b in ann.boxes})
    written = []
    if to == "coco":
        annotations = [ann for _, ann in pairs]
        for (image, _), ann in zip(pairs, annotations, strict=True):
            ann.filename = image.name
        written.append(write_coco(annotations, out / "annotations.json", names))
    elif to == "voc":
        for image, ann in pairs:
            ann.filename = image.name
            written.append(write_voc(ann, out / f"{image.stem}.xml"))
    elif to == "yolo":
        for image, ann in pairs:
            written.append(write_yolo(ann, out / f"{image.stem}.txt", names))
        written.append(write_classes(out / CLASSES_FILE, names))
    else:
        raise ValueError(f"unknown format {to}")
    return written
