from __future__ import annotations

from pathlib import Path

from annotations import Box, ImageAnnotation
from annotations.split import read_split_list, split_dataset, split_pairs


def _pairs(n: int, rare_every: int = 10) -> list[tuple[Path, ImageAnnotation]]:
    pairs = []
    for i in range(n):
        boxes = [Box("galaxy", 1, 1, 5, 5)]
        if i % rare_every == 0:
            boxes.append(Box("merger", 2, 2, 9, 9))
        pairs.append(
            (Path(f"/data/img_{i:04d}.jpg"), ImageAnnotation(f"img_{i:04d}.jpg", 10, 10, boxes=boxes))
        )
    return pairs


def test_split_is_deterministic_and_independent_of_input_order() -> None:
    pairs = _pairs(200)
    first = split_pairs(pairs, seed=3)
    again = split_pairs(list(reversed(pairs)), seed=3)
    assert first.files == again.files
    other = split_pairs(pairs, seed=4)
    assert first.files != other.files


def test_split_fractions_and_stratification() -> None:
    split = split_pairs(_pairs(200), (0.8, 0.1, 0.1))
    assert [len(split.files[n]) for n in ("train", "val", "test")] == [160, 20, 20]
    # 20 images hold the rare class: 16 / 2 / 2, not left to chance.
    assert [split.class_counts[n]["merger"] for n in ("train", "val", "test")] == [16, 2, 2]
    every = [p for files in split.files.values() for p in files]
    assert len(every) == len(set(every)) == 200


def test_adding_images_moves_few_existing_ones() -> None:
    before = split_pairs(_pairs(200), seed=0)
    after = split_pairs(_pairs(220), seed=0)
    moved = sum(1 for name in before.files for p in before.files[name] if p not in after.files[name])
    assert moved < 20


def test_split_dataset_writes_lists_that_resolve(labelimg_dir: Path, tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli(
        "annotations", "split", labelimg_dir, "--fractions", "0.5,0.5,0", "--out", tmp_path / "s"
    )
    assert code == 0 and "train: 1 images" in out
    listed = read_split_list(tmp_path / "s" / "train.txt") + read_split_list(tmp_path / "s" / "val.txt")
    assert sorted(p.name for p in listed) == ["frame_001.jpg", "frame_002.jpg"]
    assert all(p.is_file() for p in listed)
    assert read_split_list(tmp_path / "s" / "test.txt") == []
    split, _ = split_dataset(labelimg_dir, tmp_path / "t", (0.5, 0.5, 0.0))
    assert sum(len(v) for v in split.files.values()) == 2


def test_bad_fractions_are_a_clear_error(run_cli, labelimg_dir: Path) -> None:
    code, _, err = run_cli("annotations", "split", labelimg_dir, "--fractions", "0.9,0.9,0.1")
    assert code == 2 and "summing to 1" in err
    code, _, err = run_cli("annotations", "split", labelimg_dir, "--fractions", "a,b")
    assert code == 2 and "expected three numbers" in err
