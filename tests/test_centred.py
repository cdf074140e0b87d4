"""Real galaxies shrunk into mosaics (detection/centred.py): the grid, the held-out part, the check
of `evaluate --detector --gz2` and the real positives of `train --verifier --centred-galaxies`."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.centred import (
    centre_hits,
    centred_images,
    centred_part,
    is_held_out,
    mosaics,
    small_galaxy_recall,
)
from tests.conftest import GZ2_SAMPLES, REPO


def _write(folder: Path, name: str, image: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    cv2.imwrite(str(path), image)
    return path


def test_mosaics_lay_centre_crops_in_a_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 56, 3), np.uint8) for _ in range(8)]  # wider than high
    paths = [_write(tmp_path, f"{k}.png", image) for k, image in enumerate(images)]
    frames = list(mosaics(paths, 2, frame_size=(64, 48)))  # cells of 20: 3 columns, 2 rows
    assert [len(m.centres) for m in frames] == [6, 2] and all(m.cell == 20 for m in frames)
    first = frames[0]
    assert first.frame.shape == (48, 64, 3)
    np.testing.assert_array_equal(first.centres[:4], [[10, 10], [30, 10], [50, 10], [10, 30]])
    # Each cell is the image's centre square (40x40 of 40x56), shrunk by area averaging.
    expected = cv2.resize(images[4][:, 8:48], (20, 20), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(first.frame[20:40, 20:40], expected)
    # What the grid leaves (4 columns at the right, 8 rows at the bottom) is the cells' median colour.
    second = frames[1]
    cells = np.stack([cv2.resize(im[:, 8:48], (20, 20), interpolation=cv2.INTER_AREA) for im in images[6:]])
    sky = np.median(cells.reshape(-1, 3), axis=0).astype(np.uint8)
    np.testing.assert_array_equal(second.frame[45, 63], sky)
    np.testing.assert_array_equal(second.frame[40:48, :], np.broadcast_to(second.frame[45, 63], (8, 64, 3)))


def test_mosaics_refuse_images_shrunk_to_nothing(tmp_path: Path) -> None:
    from galaxy_edge.errors import GalaxyEdgeError

    path = _write(tmp_path, "tiny.png", np.zeros((30, 30, 3), np.uint8))
    with pytest.raises(GalaxyEdgeError, match=r"tiny\.png"):
        list(mosaics([path], 8))
    with pytest.raises(GalaxyEdgeError, match="shrink 0"):
        list(mosaics([path], 0))


def test_the_held_out_part_is_fixed_by_each_name(tmp_path: Path) -> None:
    names = [f"{1000 + k}.jpg" for k in range(300)]
    held = [name for name in names if is_held_out(Path(name))]
    assert 70 < len(held) < 130  # one in three
    # The same names elsewhere, and among other files, fall in the same part.
    for name in names[:20]:
        _write(tmp_path / "images", name, np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("galaxy_id\n")
    paths = centred_images(tmp_path)  # the Kaggle layout: images/ beside labels.csv
    assert [p.name for p in centred_part(paths, held_out=True)] == [n for n in names[:20] if n in held]
    assert len(centred_part(paths, True)) + len(centred_part(paths, False)) == 20


def test_centre_hits_need_the_centre_inside_and_a_plausible_size() -> None:
    centres = np.array([[50, 50], [150, 50]], np.float32)
    boxes = np.array(
        [
            [40, 40, 60, 60],  # on the first centre, 20 of a 100-pixel cell
            [48, 48, 52, 52],  # on it, but 4 pixels: under 6 % of the cell
            [0, 0, 101, 101],  # on it, but larger than the cell
            [120, 20, 149, 80],  # beside the second centre
        ],
        np.float32,
    )
    np.testing.assert_array_equal(
        centre_hits(boxes, centres, 100), [[True, False, False, False], [False, False, False, False]]
    )


def test_cell_labels_mark_the_best_centred_candidate_of_each_cell() -> None:
    from detection.centred import Mosaic
    from detection.verifier import _cell_labels

    mosaic = Mosaic(np.zeros((100, 200, 3), np.uint8), np.array([[50, 50], [150, 50]], np.float32), 100)
    boxes = np.array(
        [
            [40, 40, 60, 60],  # centred on the first galaxy
            [35, 35, 65, 65],  # centred on it too, a higher score: the one labelled
            [48, 30, 88, 70],  # covers the centre but sits 18 px off (more than 40 / 4)
            [120, 20, 149, 80],  # a neighbour: unlabelled
        ],
        np.float32,
    )
    labels = _cell_labels(boxes, np.array([0.4, 0.6, 0.9, 0.9], np.float32), mosaic)
    np.testing.assert_array_equal(labels, [-1, 1, -1, -1])


def _held_out_copies(folder: Path, sources: list[Path]) -> None:
    """Copies of sources under names that fall in the held-out part (the check reads only those)."""
    number = 0
    for source in sources:
        while not is_held_out(Path(f"{number}.jpg")):
            number += 1
        shutil.copy(source, folder / f"{number}.jpg")
        number += 1


def test_the_small_galaxy_check_finds_real_galaxies_and_not_blank_sky(tmp_path: Path) -> None:
    """The shipped detector alone keeps the bundled GZ2 galaxies shrunk 4 times (cells of 106 pixels,
    galaxies of 20-45): each cell centre under a kept box of plausible size. Blank images give none."""
    from edge.models import Detector

    detector = Detector(REPO / "models" / "galaxy_detector_int8.tflite", verify=False)
    real = tmp_path / "real"
    real.mkdir()
    _held_out_copies(real, GZ2_SAMPLES * 2)
    training_name = next(f"t{k}.jpg" for k in range(99) if not is_held_out(Path(f"t{k}.jpg")))
    shutil.copy(GZ2_SAMPLES[0], real / training_name)
    report = small_galaxy_recall(detector, real, detector.score_threshold, shrinks=(4,))
    assert report["images"] == 2 * len(GZ2_SAMPLES)  # the training part is not read
    (row,) = report["by_shrink"]
    assert row["cell"] == 106 and row["recall"] == 1.0
    blank = tmp_path / "blank"
    blank.mkdir()
    _held_out_copies(blank, [_write(tmp_path, "black.jpg", np.full((424, 424, 3), 8, np.uint8))] * 3)
    report = small_galaxy_recall(detector, blank, detector.score_threshold, shrinks=(4,))
    assert report["by_shrink"][0]["recall"] == 0


def test_the_central_galaxy_check_uses_the_same_rule_on_whole_images(tmp_path: Path) -> None:
    """`evaluate --detector --gz2`'s central check: each bundled GZ2 galaxy is under a kept box of
    plausible size at full size; a blank image has none, and its boxes (if any) count as others."""
    from detection.evaluate import gz2_central_recall
    from edge.models import Detector

    detector = Detector(REPO / "models" / "galaxy_detector_int8.tflite", verify=False)
    for sample in GZ2_SAMPLES:
        shutil.copy(sample, tmp_path / sample.name)
    _write(tmp_path, "blank.jpg", np.full((424, 424, 3), 8, np.uint8))
    report = gz2_central_recall(detector, tmp_path, detector.score_threshold)
    assert report["count"] == len(GZ2_SAMPLES) + 1
    assert report["recall"] == pytest.approx(len(GZ2_SAMPLES) / (len(GZ2_SAMPLES) + 1))
    assert report["missed_examples"] == ["blank.jpg"]
