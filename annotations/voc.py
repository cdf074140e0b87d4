"""Pascal VOC XML exactly as labelImg reads and writes it.

labelImg's writer (pascal_voc_io.py) emits: annotation[verified]/folder/filename/path/
source/database/size(width,height,depth)/segmented and one object per box with
name/pose/truncated/difficult/bndbox(xmin,ymin,xmax,ymax), pretty-printed with tabs and
no XML declaration. We produce the same bytes so files round-trip through labelImg.
"""

from __future__ import annotations

import math
from pathlib import Path

from lxml import etree

from annotations.records import AnnotationError, Box, ImageAnnotation
from annotations.safe_xml import parse_xml_bytes, parse_xml_file


def _text(parent: etree._Element, tag: str, path: Path, required: bool = True) -> str | None:
    node = parent.find(tag)
    if node is None or node.text is None or not node.text.strip():
        if required:
            where = "" if parent.tag == "annotation" else f" in <{parent.tag}>"
            raise AnnotationError(path, f"missing <{tag}>{where}")
        return None
    return node.text.strip()


def _number(parent: etree._Element, tag: str, path: Path, context: str) -> float:
    raw = _text(parent, tag, path)
    try:
        value = float(raw)
    except ValueError:
        raise AnnotationError(path, f"{context}: <{tag}> is not a number ({raw!r})") from None
    if not math.isfinite(value):
        raise AnnotationError(path, f"{context}: <{tag}> is not finite ({raw!r})")
    return value


def _flag(parent: etree._Element, tag: str) -> bool:
    node = parent.find(tag)
    if node is None or node.text is None:
        return False
    return node.text.strip() not in ("0", "", "false", "False")


def parse_voc(root: etree._Element, path: Path | str = "<memory>") -> ImageAnnotation:
    path = Path(path)
    if root.tag != "annotation":
        raise AnnotationError(path, f"root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
    size = root.find("size")
    if size is None:
        raise AnnotationError(path, "missing <size>")
    width = _number(size, "width", path, "size")
    height = _number(size, "height", path, "size")
    depth_text = _text(size, "depth", path, required=False)
    boxes = []
    for index, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name", path)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(path, f"object {index} ({name}): missing <bndbox>")
        context = f"object {index} ({name})"
        boxes.append(
            Box(
                name=name,
                xmin=_number(bndbox, "xmin", path, context),
                ymin=_number(bndbox, "ymin", path, context),
                xmax=_number(bndbox, "xmax", path, context),
                ymax=_number(bndbox, "ymax", path, context),
                difficult=_flag(obj, "difficult"),
                truncated=_flag(obj, "truncated"),
                pose=_text(obj, "pose", path, required=False) or "Unspecified",
            )
        )
    source = root.find("source")
    return ImageAnnotation(
        filename=_text(root, "filename", path),
        width=int(width),
        height=int(height),
        depth=int(depth_text) if depth_text and depth_text.isdigit() else 3,
        boxes=boxes,
        folder=_text(root, "folder", path, required=False) or "",
        path=_text(root, "path", path, required=False),
        database=(_text(source, "database", path, required=False) if source is not None else None)
        or "Unknown",
        segmented=int(_flag(root, "segmented")),
        verified=root.get("verified") == "yes",
        source_file=path,
    )


def read_voc(path: Path | str) -> ImageAnnotation:
    """Read a labelImg / Pascal VOC XML file (parsed safely: see safe_xml)."""
    return parse_voc(parse_xml_file(path), path)


def read_voc_bytes(data: bytes, path: Path | str = "<bytes>") -> ImageAnnotation:
    return parse_voc(parse_xml_bytes(data, path), path)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    node = etree.SubElement(parent, tag)
    if text is not None:
        node.text = text
    return node


def voc_bytes(annotation: ImageAnnotation) -> bytes:
    """The labelImg-shaped XML for an annotation."""
    root = etree.Element("annotation")
    if annotation.verified:
        root.set("verified", "yes")
    _sub(root, "folder", annotation.folder)
    _sub(root, "filename", annotation.filename)
    if annotation.path is not None:
        _sub(root, "path", annotation.path)
    _sub(_sub(root, "source"), "database", annotation.database)
    size = _sub(root, "size")
    _sub(size, "width", str(annotation.width))
    _sub(size, "height", str(annotation.height))
    _sub(size, "depth", str(annotation.depth))
    _sub(root, "segmented", str(annotation.segmented))
    for box in annotation.boxes:
        obj = _sub(root, "object")
        _sub(obj, "name", box.name)
        _sub(obj, "pose", box.pose)
        _sub(obj, "truncated", str(int(box.truncated)))
        _sub(obj, "difficult", str(int(box.difficult)))
        bndbox = _sub(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box.xyxy(), strict=True):
            _sub(bndbox, tag, _format_number(value))
    # labelImg pretty-prints with two spaces and then swaps each pair for a tab.
    return etree.tostring(root, pretty_print=True, encoding="utf-8").replace(b"  ", b"\t")


def write_voc(annotation: ImageAnnotation, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(voc_bytes(annotation))
    return path
