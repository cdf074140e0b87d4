from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotations import Box, ImageAnnotation, read_voc, read_yolo, voc_bytes, write_voc, write_yolo
from annotations.coco import to_coco
from annotations.convert import convert_dataset
from annotations.dataset import usable_pairs
from annotations.voc import read_voc_bytes
from annotations.yolo import read_classes, yolo_text
from tests.conftest import LABELIMG_XML


def test_voc_round_trip_is_byte_identical(tmp_path: Path) -> None:
    source = tmp_path / "a.xml"
    source.write_bytes(LABELIMG_XML)
    annotation = read_voc(source)
    assert voc_bytes(annotation) == LABELIMG_XML
    copy = write_voc(annotation, tmp_path / "b.xml")
    assert copy.read_bytes() == LABELIMG_XML


def test_voc_fields_are_read() -> None:
    annotation = read_voc_bytes(LABELIMG_XML)
    assert (annotation.filename, annotation.width, annotation.height, annotation.depth) == (
        "frame_001.jpg",
        64,
        48,
        3,
    )
    assert annotation.verified and annotation.path == "/home/user/frames/frame_001.jpg"
    galaxy, star = annotation.boxes
    assert galaxy.xyxy() == (10, 12, 30, 40) and not galaxy.difficult and not galaxy.truncated
    assert star.name == "star" and star.difficult and star.truncated


def test_voc_keeps_fractional_coordinates() -> None:
    annotation = ImageAnnotation("x.png", 100, 80, boxes=[Box("galaxy", 1.5, 2.25, 30, 40.75)])
    again = read_voc_bytes(voc_bytes(annotation))
    assert again.boxes[0].xyxy() == (1.5, 2.25, 30, 40.75)
    assert b"<verified" not in voc_bytes(annotation) and b"verified=" not in voc_bytes(annotation)


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (b"<annotation><filename>a.jpg</filename></annotation>", "missing <size>"),
        (
            b"<annotation><size><width>a</width><height>2</height></size><filename>a</filename></annotation>",
            "<width> is not a number",
        ),
        (b"<annotations/>", "expected <annotation>"),
        (
            b"<annotation><size><width>4</width><height>4</height></size><filename>a.jpg</filename>"
            b"<object><name>g</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>nan</xmax><ymax>3</ymax></bndbox>"
            b"</object></annotation>",
            "not finite",
        ),
    ],
)
def test_voc_structural_errors_name_the_problem(xml: bytes, reason: str) -> None:
    with pytest.raises(Exception, match="bad.xml: .*" + reason.replace("<", ".").replace(">", ".")):
        read_voc_bytes(xml, "bad.xml")


def test_yolo_matches_labelimg_format_and_round_trips_within_a_pixel(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    width, height = 417, 301
    boxes = []
    for _ in range(50):
        x1, y1 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        boxes.append(
            Box(
                "galaxy" if rng.random() < 0.5 else "star",
                int(x1),
                int(y1),
                int(x1 + rng.integers(2, 20)),
                int(y1 + rng.integers(2, 20)),
            )
        )
    original = ImageAnnotation("f.jpg", width, height, boxes=boxes)
    classes: list[str] = []
    text = yolo_text(original, classes)
    first = text.splitlines()[0].split()
    assert len(first) == 5 and all(len(v.split(".")[1]) == 6 for v in first[1:])
    write_yolo(original, tmp_path / "f.txt", classes)
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    back = read_yolo(tmp_path / "f.txt", read_classes(tmp_path / "classes.txt"), width, height)
    assert [b.name for b in back.boxes] == [b.name for b in boxes]
    worst = max(
        abs(u - v)
        for a, b in zip(boxes, back.boxes, strict=True)
        for u, v in zip(a.xyxy(), b.xyxy(), strict=True)
    )
    assert worst <= 1


def test_yolo_reader_rejects_bad_lines(tmp_path: Path) -> None:
    label = tmp_path / "f.txt"
    label.write_text("3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(Exception, match=r"f.txt: line 1: class index 3 outside classes.txt"):
        read_yolo(label, ["galaxy"], 100, 100)
    label.write_text("0 0.5 0.5\n")
    with pytest.raises(Exception, match="expected 5 fields"):
        read_yolo(label, ["galaxy"], 100, 100)


def test_conversions_through_the_folder_api(labelimg_dir: Path, tmp_path: Path) -> None:
    yolo_dir = tmp_path / "yolo"
    convert_dataset(labelimg_dir, "yolo", yolo_dir, classes=["galaxy", "star"])
    assert (yolo_dir / "classes.txt").read_text() == "galaxy\nstar\n"
    # Put the images beside the labels, as labelImg's YOLO mode has them, and convert back.
    for image in labelimg_dir.glob("*.jpg"):
        (yolo_dir / image.name).write_bytes(image.read_bytes())
    voc_dir = tmp_path / "voc"
    convert_dataset(yolo_dir, "voc", voc_dir)
    original = {p.name: a for p, a in usable_pairs(labelimg_dir)}
    for image, ann in usable_pairs(yolo_dir):
        before = original[image.name]
        again = read_voc(voc_dir / f"{image.stem}.xml")
        for a, b in zip(before.boxes, again.boxes, strict=True):
            assert a.name == b.name
            assert max(abs(u - v) for u, v in zip(a.xyxy(), b.xyxy(), strict=True)) <= 1
        assert (again.width, again.height) == (before.width, before.height) == (ann.width, ann.height)


def test_coco_export_evaluates_perfectly_against_itself(labelimg_dir: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    pairs = usable_pairs(labelimg_dir)
    dataset = to_coco([ann for _, ann in pairs], ["galaxy", "star"])
    star = next(a for a in dataset["annotations"] if a["category_id"] == 2)
    assert star["iscrowd"] == 1 and star["bbox"] == [50.0, 1.0, 14.0, 8.0]  # difficult -> ignored region
    ground_truth = COCO()
    ground_truth.dataset = dataset
    ground_truth.createIndex()
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in dataset["annotations"]
    ]
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP@0.5
