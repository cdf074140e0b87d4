"""The chain end to end with tiny models: CLI contract, sinks, tracking over a video,
unreadable frames, FITS with WCS, live capture, SIGTERM and memory over 2,000 frames."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.chain import Chain, ChainSettings, run, square_crop
from edge.models import Classifier, Detector
from edge.sources import LiveCapture, open_source
from tests.conftest import REPO, blob_frame

RED, GREEN, BLUE = (150, 150, 255), (150, 255, 150), (255, 150, 150)  # BGR, bright enough to detect
SCENE = [(20, 20, RED), (100, 40, GREEN), (40, 100, BLUE)]


def _write_video(path: Path, frames: int, size: tuple[int, int] = (160, 128), drift: int = 0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(frames):
        blobs = [(x + (i * drift) // 10, y, c) for x, y, c in SCENE]
        writer.write(blob_frame(size[0], size[1], blobs))
    writer.release()
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.png"), blob_frame(64, 64, [(8 + 8 * i, 8, RED), (40, 40, BLUE)]))
    (folder / "f3_corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return folder


def _args(tiny_models) -> list[str]:
    return ["--detector", str(tiny_models["detector"]), "--classifier", str(tiny_models["classifier"])]


def test_run_writes_every_output_and_counts_unreadable_frames(run_cli, tiny_models, image_folder, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", "--source", image_folder, "--out", out, *_args(tiny_models))
    assert code == 0, stderr
    assert "3 frames" in stdout and "1 unreadable frames skipped" in stdout and "0 dropped frames" in stdout
    assert "detect" in stdout and "classify" in stdout and "p90" in stdout
    assert "f3_corrupt.jpg" in stderr
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2]
    first = records[0]
    assert {"time", "frame", "source", "width", "height", "detections", "latency_ms"} <= set(first)
    labels = sorted(d["label"] for d in first["detections"])
    assert labels == ["blue", "red"]
    detection = first["detections"][0]
    assert {"box", "score", "label", "probs", "track_id"} <= set(detection) and set(detection["probs"]) == {
        "red",
        "green",
        "blue",
    }
    rows = list(csv.DictReader((out / "catalog.csv").open()))
    assert rows and {
        "track_id",
        "label",
        "confidence",
        "first_frame",
        "last_frame",
        "x",
        "y",
        "ra_deg",
    } <= set(rows[0])
    assert len(list((out / "annotated").glob("*.jpg"))) == 3


def test_static_scene_is_tracked_and_not_reclassified_every_frame(tiny_models, tmp_path):
    video = _write_video(tmp_path / "scene.avi", 40)
    chain = Chain(
        Detector(tiny_models["detector"]),
        Classifier(tiny_models["classifier"]),
        ChainSettings(reclassify_every=30, annotate=False),
    )
    summary = run(chain, open_source(str(video)), tmp_path / "out")
    assert summary.frames == 40 and summary.galaxies == 3
    tracks = chain.tracker.all_tracks()
    assert [t.classifications for t in tracks] == [2, 2, 2]  # frames 0 and 30
    rows = list(csv.DictReader((tmp_path / "out" / "catalog.csv").open()))
    by_position = sorted((float(r["x"]), r["label"], int(r["last_frame"])) for r in rows)
    assert [label for _, label, _ in by_position] == ["red", "blue", "green"]
    assert all(last == 39 for _, _, last in by_position)


def test_boxes_of_another_detector_label_keep_it_and_are_not_classified(tiny_models, tmp_path):
    """A detector with a second label (galaxy, star): the classifier refines only galaxies; stars keep
    their label and detection score in the records and the catalogue, and are not counted."""

    class GalaxyStarDetector(Detector):
        def detect_image(self, image_bgr, offset=(0.0, 0.0)):
            found = super().detect_image(image_bgr, offset)
            right = (found.boxes[:, 0] + found.boxes[:, 2]) / 2 > 80  # blobs right of x=80 are stars
            found.class_ids = np.where(right, 1, 0).astype(found.class_ids.dtype)
            return found

    detector = GalaxyStarDetector(tiny_models["detector"])
    detector.labels = ["galaxy", "star"]
    chain = Chain(detector, Classifier(tiny_models["classifier"]), ChainSettings())
    summary = run(chain, open_source(str(_write_video(tmp_path / "scene.avi", 3))), tmp_path / "out")
    assert len(list((tmp_path / "out" / "annotated").glob("*.jpg"))) == 3  # star boxes drawn too
    assert summary.galaxies == 2  # the red and blue blobs; the green one (x=100) is a star
    records = [json.loads(line) for line in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    by_label = {d["label"]: d for d in records[-1]["detections"]}
    assert set(by_label) == {"red", "blue", "star"}
    assert "probs" not in by_label["star"] and by_label["star"]["confidence"] == by_label["star"]["score"]
    stars = [t for t in chain.tracker.all_tracks() if t.detector_label == "star"]
    assert len(stars) == 1 and stars[0].classifications == 0
    rows = list(csv.DictReader((tmp_path / "out" / "catalog.csv").open()))
    assert sorted(r["label"] for r in rows) == ["blue", "red", "star"]


def _with_resolution_floor(classifier: Path, folder: Path, floor: float) -> Path:
    """A copy of the classifier whose card carries resolution_floor_px."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / classifier.name
    copy.write_bytes(classifier.read_bytes())
    card = json.loads(classifier.with_suffix(".json").read_text())
    card["resolution_floor_px"] = floor
    copy.with_suffix(".json").write_text(json.dumps(card))
    return copy


def test_galaxies_under_the_resolution_floor_are_unresolved_and_not_classified(
    tiny_models, run_cli, tmp_path
):
    """Boxes under the classifier card's floor are labelled 'unresolved' with their detection score and
    never cropped or classified; larger ones are classified; --min-classify-px overrides the card."""

    class LargerOnTheRight(Detector):
        def detect_image(self, image_bgr, offset=(0.0, 0.0)):
            found = super().detect_image(image_bgr, offset)
            centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
            half = (found.boxes[:, 2:] - found.boxes[:, :2]) / 2
            grow = np.where(centres[:, :1] > 80, 3.0, 1.0)  # blobs right of x=80: boxes 3 times larger
            found.boxes = np.hstack([centres - grow * half, centres + grow * half]).astype(np.float32)
            return found

    detector = LargerOnTheRight(tiny_models["detector"])
    boxes = Chain(detector, None).detect(blob_frame(160, 128, SCENE)).boxes  # tiled, as run() detects
    sides = np.sort(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
    assert len(sides) == 3 and sides[1] * 2 < sides[2]  # two small boxes, one large
    floor = float(sides[1] + sides[2]) / 2
    classifier = Classifier(_with_resolution_floor(tiny_models["classifier"], tmp_path / "floored", floor))
    assert classifier.resolution_floor_px == floor
    invoked: list[int] = []
    classify = classifier.classify
    classifier.classify = lambda crops, rotations=False: (
        invoked.append(len(crops)) or classify(crops, rotations)
    )
    chain = Chain(detector, classifier, ChainSettings())
    summary = run(chain, open_source(str(_write_video(tmp_path / "scene.avi", 3))), tmp_path / "out")
    assert summary.galaxies == 3 and summary.unresolved == 2 and "2 of them unresolved" in summary.lines()[0]
    assert invoked == [1]  # the large galaxy, once (static scene)
    records = [json.loads(line) for line in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    by_label: dict[str, list[dict]] = {}
    for detection in records[-1]["detections"]:
        by_label.setdefault(detection["label"], []).append(detection)
    unresolved = by_label.pop("unresolved")
    assert len(unresolved) == 2 and all(
        d["confidence"] == d["score"] and "probs" not in d for d in unresolved
    )
    [(label, [classified])] = (
        by_label.items()
    )  # the large one: a class (or "uncertain") and its probabilities
    assert "probs" in classified
    rows = list(csv.DictReader((tmp_path / "out" / "catalog.csv").open()))
    assert sorted(r["label"] for r in rows) == sorted([label, "unresolved", "unresolved"])
    # 0 classifies every galaxy, whatever the card says.
    chain = Chain(detector, classifier, ChainSettings(min_classify_px=0))
    summary = run(chain, open_source(str(_write_video(tmp_path / "scene.avi", 1))), tmp_path / "all")
    assert summary.unresolved == 0 and invoked[-1] == 3
    code, stdout, stderr = run_cli(
        "run", "--source", tmp_path / "scene.avi", "--out", tmp_path / "cli", "--min-classify-px", 1000,
        "--detector", tiny_models["detector"], "--classifier", tiny_models["classifier"],
    )  # fmt: skip
    assert code == 0, stderr
    assert "3 galaxies (unique tracks), 3 of them unresolved" in stdout
    code, _, stderr = run_cli("run", "--source", tmp_path / "scene.avi", "--min-classify-px", "-1")
    assert code != 0 and "--min-classify-px" in stderr and "0 or more" in stderr


def test_stills_in_a_folder_do_not_share_tracks(tiny_models, tmp_path):
    folder = tmp_path / "stills"
    folder.mkdir()
    frame = blob_frame(64, 64, [(8, 8, (150, 150, 255)), (40, 40, (255, 150, 150))])
    for name in ("a.png", "b.png"):  # the same picture twice: still two scenes
        cv2.imwrite(str(folder / name), frame)
    chain = Chain(Detector(tiny_models["detector"]), Classifier(tiny_models["classifier"]), ChainSettings())
    summary = run(chain, open_source(str(folder)), tmp_path / "out")
    assert summary.frames == 2 and summary.galaxies == 4
    rows = list(csv.DictReader((tmp_path / "out" / "catalog.csv").open()))
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in rows) == ["a.png", "a.png", "b.png", "b.png"]


def test_detect_and_classify_json_contract(run_cli, tiny_models, image_folder, tmp_path):
    code, stdout, stderr = run_cli(
        "detect", image_folder / "f0.png", "--model", tiny_models["detector"], "--json"
    )
    assert code == 0, stderr
    record = json.loads(stdout.strip())
    assert record["image"].endswith("f0.png") and (record["width"], record["height"]) == (64, 64)
    boxes = sorted(d["box"] for d in record["detections"])
    assert len(boxes) == 2 and all(
        d["label"] == "galaxy" and 0 < d["score"] <= 1 for d in record["detections"]
    )
    assert abs((boxes[0][0] + boxes[0][2]) / 2 - 12) <= 4  # the red blob at x 8..16
    crop = tmp_path / "red.png"
    cv2.imwrite(str(crop), np.full((30, 30, 3), RED, np.uint8))
    code, stdout, _ = run_cli("classify", crop, "--model", tiny_models["classifier"], "--json")
    record = json.loads(stdout.strip())
    assert code == 0 and record["label"] == "red" and record["score"] > 0.5
    assert set(record["probs"]) == {"red", "green", "blue"} and abs(sum(record["probs"].values()) - 1) < 0.02
    code, _, stderr = run_cli(
        "classify", image_folder / "f3_corrupt.jpg", "--model", tiny_models["classifier"]
    )
    assert code == 1 and "f3_corrupt.jpg" in stderr


def test_fits_frames_give_sky_positions(tiny_models, tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [32.5, 32.5]
    wcs.wcs.cdelt = [-0.0001, 0.0001]
    data = np.full((64, 64), 10.0, np.float32) + np.random.default_rng(0).normal(0, 1, (64, 64)).astype(
        np.float32
    )
    data[28:36, 28:36] += 500
    fits.PrimaryHDU(data, header=wcs.to_header()).writeto(tmp_path / "field.fits")
    chain = Chain(Detector(tiny_models["detector"]), Classifier(tiny_models["classifier"]))
    run(chain, open_source(str(tmp_path / "field.fits")), tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "catalog.csv").open()))
    assert len(rows) == 1
    ra, dec = wcs.pixel_to_world_values(float(rows[0]["x"]), float(rows[0]["y"]))
    assert float(rows[0]["ra_deg"]) == pytest.approx(float(ra), abs=1e-6)
    assert float(rows[0]["dec_deg"]) == pytest.approx(float(dec), abs=1e-6)


def test_live_capture_hands_the_newest_frame_and_ends_when_the_device_is_gone(tmp_path):
    video = _write_video(tmp_path / "live.avi", 60)
    capture = LiveCapture(str(video), reconnect_attempts=1, retry_delay=0.01)
    video.unlink()  # the "device" disappears: once its frames run out, reopening fails
    got = 0
    for _frame in capture:
        got += 1
        time.sleep(0.02)  # a slow consumer: the capture thread keeps replacing the frame
    capture.close()
    assert 0 < got < 60 and capture.stats.dropped > 0 and got + capture.stats.dropped == 60
    assert capture.stats.reconnects == 1


def test_square_crop_pads_outside_the_frame() -> None:
    frame = np.full((50, 50, 3), 255, np.uint8)
    crop = square_crop(frame, np.array([0, 0, 10, 20]), 1.5)
    assert crop.shape == (30, 30, 3) and crop[0, 0].sum() == 0 and crop[-1, -1].sum() == 255 * 3


def test_sigterm_loses_nothing_already_written(tiny_models, tmp_path):
    video = _write_video(tmp_path / "long.avi", 3000, drift=1)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "galaxy_edge",
            "run",
            "--source",
            str(video),
            "--out",
            str(out),
            *_args(tiny_models),
            "--no-annotate",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    jsonl = out / "detections.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not jsonl.exists() or jsonl.stat().st_size < 2000):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    lines = jsonl.read_text().splitlines()
    assert 0 < len(lines) < 3000
    assert all(json.loads(line)["frame"] == i for i, line in enumerate(lines))
    assert f"{len(lines)} frames" in stdout and (out / "catalog.csv").is_file()


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for RSS")
def test_soak_2000_frames_memory_stays_flat(tiny_models, tmp_path):
    video = _write_video(tmp_path / "soak.avi", 2000, size=(320, 240), drift=3)
    chain = Chain(
        Detector(tiny_models["detector"]),
        Classifier(tiny_models["classifier"]),
        ChainSettings(annotate=False),
    )
    source = open_source(str(video))
    frames = iter(source)
    for _ in range(200):  # warm-up
        chain.process(next(frames))
    start = _rss_mb()
    processed = 200
    for frame in frames:
        chain.process(frame)
        processed += 1
    growth = _rss_mb() - start
    source.close()
    assert processed == 2000
    assert growth < 20, f"RSS grew {growth:.1f} MB over 1,800 frames"
    assert len(chain.tracker.tracks) < 50  # tracks of blobs that drift away are retired
