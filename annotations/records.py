"""In-memory annotation records: one image, its size and its boxes.

Coordinates follow labelImg: pixel coordinates of the box corners as labelImg writes them
(xmin, ymin, xmax, ymax), width = xmax - xmin. Values are kept exactly as read so that a
VOC file read and written again is byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from galaxy_edge.errors import GalaxyEdgeError


class AnnotationError(GalaxyEdgeError):
    """An annotation file that cannot be used; str() is `PATH: reason`."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Box:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def xyxy(self) -> tuple[float, float, float, float]:
        return self.xmin, self.ymin, self.xmax, self.ymax

    def iou(self, other: Box) -> float:
        ix = min(self.xmax, other.xmax) - max(self.xmin, other.xmin)
        iy = min(self.ymax, other.ymax) - max(self.ymin, other.ymin)
        if ix <= 0 or iy <= 0:
            return 0.0
        inter = ix * iy
        return inter / (self.area + other.area - inter)


@dataclass
class ImageAnnotation:
    filename: str
    width: int
    height: int
    depth: int = 3
    boxes: list[Box] = field(default_factory=list)
    folder: str = ""
    path: str | None = None
    database: str = "Unknown"
    segmented: int = 0
    verified: bool = False
    source_file: Path | None = None  # the annotation file this came from, for messages

    def class_names(self) -> list[str]:
        return [box.name for box in self.boxes]
