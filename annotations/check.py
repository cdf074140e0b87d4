"""`annotations check`: every problem a labelImg folder can have, one `PATH: reason` each.

Safe fixes (`fix=True`) only clip boxes to the image and correct the size fields; every
changed file is backed up first.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotations.dataset import AnnotatedImage, find_images, load_dataset
from annotations.images import verify_image
from annotations.records import AnnotationError, Box, ImageAnnotation
from annotations.voc import write_voc
from annotations.yolo import CLASSES_FILE, read_classes, write_yolo

DUPLICATE_IOU = 0.95


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str
    fixable: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    annotation_files: int = 0
    images: int = 0
    unannotated_images: int = 0
    images_without_boxes: int = 0
    boxes_per_class: Counter = field(default_factory=Counter)
    box_widths: list[float] = field(default_factory=list)
    box_heights: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        total = sum(self.boxes_per_class.values())
        lines = [
            f"{self.annotation_files} annotation files, {self.images} images "
            f"({self.unannotated_images} without an annotation file, "
            f"{self.images_without_boxes} with no boxes), "
            f"{total} boxes"
        ]
        for name, count in sorted(self.boxes_per_class.items()):
            lines.append(f"  {name}: {count} boxes")
        if total:
            q = (5, 25, 50, 75, 95)
            widths = np.percentile(self.box_widths, q)
            heights = np.percentile(self.box_heights, q)
            header = "  box size percentiles (px)  " + "  ".join(f"p{p:<4d}" for p in q)
            lines.append(header)
            lines.append("    width                   " + "  ".join(f"{v:6.1f}" for v in widths))
            lines.append("    height                  " + "  ".join(f"{v:6.1f}" for v in heights))
        return lines


def _box_problems(
    annotation: ImageAnnotation, width: int, height: int, labels: Iterable[str] | None
) -> list[tuple[str, bool]]:
    """(reason, fixable) for each box problem."""
    found: list[tuple[str, bool]] = []
    allowed = set(labels) if labels is not None else None
    for index, box in enumerate(annotation.boxes, start=1):
        tag = f"box {index} ({box.name} {_coords(box)})"
        if allowed is not None and box.name not in allowed:
            found.append(
                (f"{tag}: unknown class '{box.name}' (expected {', '.join(sorted(allowed))})", False)
            )
        if box.xmin > box.xmax or box.ymin > box.ymax:
            found.append((f"{tag}: inverted coordinates (min greater than max)", False))
            continue
        if box.width == 0 or box.height == 0:
            found.append((f"{tag}: zero width or height", False))
            continue
        if box.xmin < 0 or box.ymin < 0 or box.xmax > width or box.ymax > height:
            inside = box.xmax > 0 and box.ymax > 0 and box.xmin < width and box.ymin < height
            found.append((f"{tag}: box outside the image ({width}x{height})", inside))
    for i, a in enumerate(annotation.boxes):
        for j in range(i + 1, len(annotation.boxes)):
            b = annotation.boxes[j]
            if a.name == b.name and a.width > 0 and a.height > 0 and a.iou(b) >= DUPLICATE_IOU:
                found.append((f"box {j + 1} ({b.name} {_coords(b)}): duplicate of box {i + 1}", False))
    return found


def _coords(box: Box) -> str:
    return "[" + " ".join(f"{v:g}" for v in box.xyxy()) + "]"


def _clip(annotation: ImageAnnotation, width: int, height: int) -> int:
    clipped = 0
    for box in annotation.boxes:
        inside = box.xmax > 0 and box.ymax > 0 and box.xmin < width and box.ymin < height
        if not inside or box.xmin > box.xmax or box.ymin > box.ymax:
            continue
        new = (max(box.xmin, 0), max(box.ymin, 0), min(box.xmax, width), min(box.ymax, height))
        if new != box.xyxy():
            box.xmin, box.ymin, box.xmax, box.ymax = new
            box.truncated = True
            clipped += 1
    return clipped


def backup(path: Path) -> Path:
    """Copy path to path.bak (path.bak1, .bak2 ... if taken) and return the copy."""
    target = path.with_name(path.name + ".bak")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.bak{counter}")
        counter += 1
    shutil.copy2(path, target)
    return target


def _check_one(
    item: AnnotatedImage, labels: Iterable[str] | None, fix: bool, report: CheckReport
) -> list[Problem]:
    path = item.annotation_path
    if item.error is not None:
        return [Problem(item.error.path, item.error.reason)]
    problems: list[Problem] = []
    if item.image_problem:
        problems.append(Problem(path, item.image_problem))
    annotation = item.annotation
    width, height = annotation.width, annotation.height
    size_fixable = False
    if item.image_path is not None:
        try:
            real_w, real_h, _ = verify_image(item.image_path)
        except AnnotationError as error:
            problems.append(Problem(path, f"image {item.image_path.name} unreadable: {error.reason}"))
        else:
            if (real_w, real_h) != (width, height):
                problems.append(
                    Problem(
                        path,
                        f"size in annotation {width}x{height} differs from image {real_w}x{real_h}",
                        fixable=item.format == "voc",
                    )
                )
                size_fixable = item.format == "voc"
                width, height = real_w, real_h
    box_problems = _box_problems(annotation, width, height, labels)
    problems += [Problem(path, reason, fixable) for reason, fixable in box_problems]

    if fix and any(p.fixable for p in problems):
        changes = []
        if size_fixable:
            changes.append(f"size {annotation.width}x{annotation.height} -> {width}x{height}")
            annotation.width, annotation.height = width, height
        clipped = _clip(annotation, width, height)
        if clipped:
            changes.append(f"clipped {clipped} box(es) to the image")
        saved = backup(path)
        if item.format == "voc":
            write_voc(annotation, path)
        else:
            write_yolo(annotation, path, read_classes(path.parent / CLASSES_FILE))
        report.fixed.append(f"{path}: fixed ({'; '.join(changes)}), backup {saved.name}")
        problems = [
            Problem(path, reason, fixable)
            for reason, fixable in _box_problems(annotation, width, height, labels)
        ]
        if item.image_problem:
            problems.insert(0, Problem(path, item.image_problem))

    report.images_without_boxes += not annotation.boxes
    for box in annotation.boxes:
        report.boxes_per_class[box.name] += 1
        report.box_widths.append(box.width)
        report.box_heights.append(box.height)
    return problems


def check_dataset(root: Path | str, labels: Iterable[str] | None = None, fix: bool = False) -> CheckReport:
    """Check every labelImg annotation under root; see the module docstring."""
    root = Path(root)
    report = CheckReport()
    items = load_dataset(root)
    report.annotation_files = len(items)
    annotated = set()
    for item in items:
        report.problems += _check_one(item, labels, fix, report)
        if item.image_path is not None:
            annotated.add(item.image_path.resolve())
    images = [p.resolve() for p in find_images(root)]
    report.images = len(set(images) | annotated)
    report.unannotated_images = len(set(images) - annotated)
    if not items:
        report.problems.append(
            Problem(root, "no annotations found (VOC .xml, or YOLO .txt with a classes.txt beside them)")
        )
    return report
