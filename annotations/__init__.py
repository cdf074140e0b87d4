"""labelImg annotations: Pascal VOC XML and YOLO txt read and written as labelImg does,
COCO JSON for pycocotools, checks and safe fixes, stratified splits, and draft boxes from
classical source extraction (sep).

Public surface::

    from annotations import Box, ImageAnnotation, read_voc, write_voc, read_yolo, write_yolo
"""

from annotations.records import AnnotationError, Box, ImageAnnotation
from annotations.voc import read_voc, voc_bytes, write_voc
from annotations.yolo import read_classes, read_yolo, write_classes, write_yolo

__all__ = [
    "AnnotationError",
    "Box",
    "ImageAnnotation",
    "read_classes",
    "read_voc",
    "read_yolo",
    "voc_bytes",
    "write_classes",
    "write_voc",
    "write_yolo",
]
