"""`annotations check`: one test per problem it must find, the clean summary, and --fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotations import Box, ImageAnnotation, read_voc, write_voc
from annotations.check import check_dataset
from tests.conftest import write_image


def _dataset(
    tmp_path: Path,
    boxes: list[Box],
    image_name: str = "f.jpg",
    xml_filename: str | None = None,
    size: tuple[int, int] = (64, 48),
    image_size: tuple[int, int] = (64, 48),
) -> Path:
    folder = tmp_path / "data"
    write_image(folder / image_name, *image_size)
    write_voc(ImageAnnotation(xml_filename or image_name, size[0], size[1], boxes=boxes), folder / "f.xml")
    return folder


def _reasons(folder: Path, **kwargs) -> list[str]:
    return [str(p) for p in check_dataset(folder, **kwargs).problems]


def test_clean_folder_passes_with_summary(labelimg_dir: Path) -> None:
    report = check_dataset(labelimg_dir, labels=["galaxy", "star"])
    assert report.ok, report.problems
    assert report.annotation_files == 2 and report.images == 2
    assert report.boxes_per_class == {"galaxy": 2, "star": 2}
    summary = "\n".join(report.summary_lines())
    assert "galaxy: 2 boxes" in summary and "p50" in summary


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([Box("galaxy", 50, 10, 70, 20)], "box outside the image (64x48)"),
        ([Box("galaxy", -3, 10, 20, 20)], "box outside the image"),
        ([Box("galaxy", 10, 10, 10, 20)], "zero width or height"),
        ([Box("galaxy", 30, 10, 20, 20)], "inverted coordinates"),
        ([Box("comet", 10, 10, 20, 20)], "unknown class 'comet'"),
        (
            [Box("galaxy", 10, 10, 20, 20), Box("galaxy", 10, 10, 20, 20)],
            "box 2 (galaxy [10 10 20 20]): duplicate of box 1",
        ),
    ],
)
def test_box_problems(tmp_path: Path, boxes: list[Box], expected: str) -> None:
    reasons = _reasons(_dataset(tmp_path, boxes), labels=["galaxy", "star"])
    assert len(reasons) == 1 and expected in reasons[0], reasons
    assert reasons[0].startswith(str(tmp_path / "data" / "f.xml") + ": ")


def test_same_boxes_of_different_classes_are_not_duplicates(tmp_path: Path) -> None:
    assert _reasons(_dataset(tmp_path, [Box("galaxy", 10, 10, 20, 20), Box("star", 10, 10, 20, 20)])) == []


def test_size_mismatch(tmp_path: Path) -> None:
    reasons = _reasons(_dataset(tmp_path, [Box("galaxy", 1, 1, 5, 5)], size=(64, 48), image_size=(80, 60)))
    assert reasons == [f"{tmp_path / 'data' / 'f.xml'}: size in annotation 64x48 differs from image 80x60"]


def test_jpeg_extension_and_case_mismatch(tmp_path: Path) -> None:
    folder = _dataset(tmp_path, [Box("galaxy", 1, 1, 5, 5)], image_name="f.JPEG", xml_filename="f.jpg")
    reasons = _reasons(folder)
    assert len(reasons) == 1
    assert "filename 'f.jpg' in the annotation does not match 'f.JPEG' on disk" in reasons[0]


def test_missing_image(tmp_path: Path) -> None:
    folder = _dataset(tmp_path, [Box("galaxy", 1, 1, 5, 5)], xml_filename="other.png")
    reasons = _reasons(folder)
    assert len(reasons) == 1 and "image 'other.png' named in the annotation not found" in reasons[0]


def test_unreadable_image(tmp_path: Path) -> None:
    folder = _dataset(tmp_path, [Box("galaxy", 1, 1, 5, 5)])
    image = folder / "f.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    reasons = _reasons(folder)
    assert len(reasons) == 1 and "image f.jpg unreadable" in reasons[0]


def test_malformed_and_empty_xml(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_image(folder / "a.jpg")
    (folder / "a.xml").write_text("<annotation><filename>a.jpg</filename>")
    (folder / "b.xml").write_text("   \n")
    reasons = sorted(_reasons(folder))
    assert reasons[0].startswith(f"{folder / 'a.xml'}: malformed XML:")
    assert reasons[1] == f"{folder / 'b.xml'}: empty annotation file"


def test_yolo_labels_are_checked_too(tmp_path: Path) -> None:
    folder = tmp_path / "yolo"
    write_image(folder / "a.png", 100, 50)
    (folder / "classes.txt").write_text("galaxy\n")
    (folder / "a.txt").write_text("0 0.95 0.5 0.2 0.2\n")  # x from 85 to 105 in a 100-wide image
    reasons = _reasons(folder)
    assert len(reasons) == 1 and "box outside the image (100x50)" in reasons[0]
    (folder / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    assert "class index 1 outside classes.txt" in _reasons(folder)[0]


def test_fix_clips_boxes_and_corrects_size_with_backup(tmp_path: Path) -> None:
    folder = _dataset(
        tmp_path,
        [Box("galaxy", -2, 5, 90, 20), Box("galaxy", 10, 10, 10, 20)],
        size=(64, 48),
        image_size=(80, 60),
    )
    xml = folder / "f.xml"
    original = xml.read_bytes()
    report = check_dataset(folder, fix=True)
    assert (folder / "f.xml.bak").read_bytes() == original
    fixed = read_voc(xml)
    assert (fixed.width, fixed.height) == (80, 60)
    assert fixed.boxes[0].xyxy() == (0, 5, 80, 20) and fixed.boxes[0].truncated
    # The zero-width box is not safely fixable: it is still reported, and untouched.
    assert [p.reason for p in report.problems] == ["box 2 (galaxy [10 10 10 20]): zero width or height"]
    assert fixed.boxes[1].xyxy() == (10, 10, 10, 20)
    check_dataset(folder, fix=True)
    assert not (folder / "f.xml.bak1").exists()  # nothing left to fix: no second backup


def test_cli_exit_codes(run_cli, labelimg_dir: Path, tmp_path: Path) -> None:
    code, out, _ = run_cli("annotations", "check", labelimg_dir, "--labels", "galaxy,star")
    assert code == 0 and "no problems found" in out and "galaxy: 2 boxes" in out
    code, out, err = run_cli("annotations", "check", labelimg_dir, "--labels", "galaxy")
    assert code == 1 and out.count("unknown class 'star'") == 2 and "2 problem(s) found" in err
    code, _, err = run_cli("annotations", "check", tmp_path / "nope")
    assert code == 2 and err.strip().endswith("not a folder") and len(err.strip().splitlines()) == 1
