"""COCO JSON from annotations, in the shape pycocotools' COCO() and COCOeval expect.

VOC `difficult` objects become `iscrowd: 1`: pycocotools treats crowd boxes as regions
where detections are neither rewarded nor penalised, which is VOC's meaning of difficult.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from annotations.records import ImageAnnotation


def category_names(annotations: Sequence[ImageAnnotation]) -> list[str]:
    return sorted({box.name for ann in annotations for box in ann.boxes})


def to_coco(annotations: Sequence[ImageAnnotation], categories: Sequence[str] | None = None) -> dict:
    """A COCO dataset dict; image ids are 1.. in input order, category ids 1.. in `categories` order."""
    categories = list(categories) if categories is not None else category_names(annotations)
    category_id = {name: i for i, name in enumerate(categories, start=1)}
    images, objects = [], []
    for image_id, ann in enumerate(annotations, start=1):
        images.append({"id": image_id, "file_name": ann.filename, "width": ann.width, "height": ann.height})
        for box in ann.boxes:
            if box.name not in category_id:
                continue
            w, h = max(box.width, 0.0), max(box.height, 0.0)
            objects.append(
                {
                    "id": len(objects) + 1,
                    "image_id": image_id,
                    "category_id": category_id[box.name],
                    "bbox": [float(box.xmin), float(box.ymin), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(box.difficult),
                    "difficult": int(box.difficult),
                }
            )
    return {
        "info": {"description": "galaxy-edge annotations"},
        "images": images,
        "annotations": objects,
        "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in category_id.items()],
    }


def write_coco(annotations: Sequence[ImageAnnotation], path: Path | str, categories=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_coco(annotations, categories), indent=1))
    return path
