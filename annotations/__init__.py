"""labelImg annotations: Pascal VOC XML and YOLO txt read and written as labelImg does,
COCO JSON for pycocotools, checks and safe fixes, stratified splits, and draft boxes from
classical source extraction (sep).

Public surface::

    from annotations import Box, ImageAnnotation, read_voc, write_voc, read_yolo, write_yolo

Names are loaded on first use, so importing the package (as the CLI does to list its
verbs) needs no XML library.
"""

from importlib import import_module

_PUBLIC = {
    "AnnotationError": "annotations.records",
    "Box": "annotations.records",
    "ImageAnnotation": "annotations.records",
    "read_voc": "annotations.voc",
    "voc_bytes": "annotations.voc",
    "write_voc": "annotations.voc",
    "read_classes": "annotations.yolo",
    "read_yolo": "annotations.yolo",
    "write_classes": "annotations.yolo",
    "write_yolo": "annotations.yolo",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'annotations' has no attribute {name!r}")
