"""Sky proposals (edge.proposals): sources found by thresholding on small noisy arrays, and the
verifier judging them beside the detector's candidates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.interpreter import ModelError
from edge.models import Detections, Detector, Verifier
from edge.proposals import SkyProposalSettings, sky_background, sky_proposals
from tests.test_verifier import WHITE, YELLOW, verified_detector  # noqa: F401 (a fixture)

SETTINGS = SkyProposalSettings()


def noisy_sky(width: int, height: int, sky: float = 40.0, sigma: float = 4.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(sky, sigma, (height, width)).astype(np.float32)


def add_gaussian(image: np.ndarray, x: float, y: float, amplitude: float, sigma: float) -> None:
    rows, columns = np.mgrid[: image.shape[0], : image.shape[1]]
    image += amplitude * np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))


def as_frame(image: np.ndarray) -> np.ndarray:
    gray = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def test_bright_sources_are_boxed_around_their_centres() -> None:
    image = noisy_sky(160, 120)
    sources = [(30.0, 30.0), (120.0, 40.0), (70.0, 95.0)]
    for x, y in sources:
        add_gaussian(image, x, y, amplitude=60, sigma=1.5)
    boxes = sky_proposals(as_frame(image), SETTINGS)
    assert len(boxes) == 3
    for x, y in sources:
        inside = (boxes[:, 0] <= x) & (boxes[:, 2] > x) & (boxes[:, 1] <= y) & (boxes[:, 3] > y)
        assert inside.sum() == 1
        box = boxes[inside][0]
        # The region above 3 filtered-noise sigmas: about 4 pixels each way for this source.
        assert 6 <= box[2] - box[0] <= 12 and 6 <= box[3] - box[1] <= 12
        assert abs((box[0] + box[2]) / 2 - x - 0.5) <= 1 and abs((box[1] + box[3]) / 2 - y - 0.5) <= 1


def test_a_source_under_the_high_threshold_is_not_proposed() -> None:
    image = noisy_sky(160, 120)
    add_gaussian(image, 80, 60, amplitude=4, sigma=1.5)  # filtered peak about 2.5 noise sigmas
    assert len(sky_proposals(as_frame(image), SETTINGS)) == 0
    add_gaussian(image, 80, 60, amplitude=36, sigma=1.5)
    assert len(sky_proposals(as_frame(image), SETTINGS)) == 1


def test_a_sky_gradient_is_background_not_sources() -> None:
    image = noisy_sky(256, 192) + np.linspace(0, 120, 256, dtype=np.float32)[None, :]
    background = sky_background(image, 64)
    # Out to the frame's edges: the outer cells' gradient is extrapolated, not held flat.
    assert np.abs(background - (image - noisy_sky(256, 192) + 40)).max() < 3  # flat: 15 at the edges
    assert len(sky_proposals(as_frame(image), SETTINGS)) <= 1


def test_a_flat_image_has_no_noise_and_no_proposals() -> None:
    frame = np.full((64, 64, 3), 50, np.uint8)
    frame[20:28, 20:28] = 200
    assert sky_proposals(frame, SETTINGS).shape == (0, 4)


def test_bad_settings_are_refused() -> None:
    for bad in ({"low_sigma": 7.0}, {"smoothing_sigma": 0}, {"prior_score": 1.0}, {"min_area": 0}):
        with pytest.raises(ValueError):
            SkyProposalSettings.from_card(bad)
    with pytest.raises(TypeError):
        SkyProposalSettings.from_card({"threshold": 3})


def with_sky_proposals(folder: Path, target: Path, spec) -> Path:
    """A copy of the tiny verified detector whose verifier card has `sky_proposals` = spec."""
    for path in folder.iterdir():
        shutil.copy(path, target / path.name)
    card_path = target / "tiny_verifier_int8.json"
    card = json.loads(card_path.read_text())
    card["verification"]["sky_proposals"] = spec
    card_path.write_text(json.dumps(card))
    return target / "tiny_detector_int8.tflite"


def centres(boxes: np.ndarray) -> list[tuple[int, int]]:
    return sorted(map(tuple, np.round((boxes[:, :2] + boxes[:, 2:]) / 2).astype(int).tolist()))


def test_the_verifier_judges_proposals_no_candidate_covers(verified_detector: Path, tmp_path: Path) -> None:  # noqa: F811
    detector = Detector(with_sky_proposals(verified_detector.parent, tmp_path, {"prior_score": 0.2}))
    verifier = detector.verifier
    image = noisy_sky(96, 96, sky=20, sigma=3)
    frame = as_frame(image)
    for (x, y), colour in (((10, 10), WHITE), ((50, 10), YELLOW), ((10, 60), WHITE), ((60, 60), WHITE)):
        frame[y : y + 8, x : x + 8] = colour
    frame[60:68, 60:68] = np.clip(frame[60:68, 60:68].astype(int) + np.array([200, 0, 0]), 0, 255)
    covered = Detections(
        np.array([[8, 8, 20, 20]], np.float32), np.array([0.9], np.float32), np.zeros(1, int)
    )
    sky = detector.sky(frame)
    joined = detector.with_proposals(covered, sky)
    # The covered source is not proposed again; the other three join at the prior score.
    assert len(joined) == 4 and (joined.scores[1:] == pytest.approx(0.2))
    assert centres(joined.boxes[1:]) == [(14, 64), (54, 14), (64, 64)]
    # Only sources under max_side are proposed.
    verifier.max_side = 8
    assert len(detector.with_proposals(Detections.empty(), sky)) == 0
    verifier.max_side = 64
    # The verifier keeps the white ones (it wants blue) and drops the yellow one.
    found = detector.finish(frame, Detections.empty())
    assert centres(found.boxes) == [(14, 14), (14, 64), (64, 64)]


def test_rolling_tiles_give_the_proposals_a_turn(verified_detector: Path, tmp_path: Path) -> None:  # noqa: F811
    from edge.tiling import RollingTiles, detect_tiled

    detector = Detector(with_sky_proposals(verified_detector.parent, tmp_path, {}))
    frame = as_frame(noisy_sky(200, 150, sky=20, sigma=3))
    frame[100:108, 40:48] = WHITE
    rolling = RollingTiles(detector, per_frame=1)
    found = rolling.detect(frame)
    assert rolling.tiles[-1] == RollingTiles.SKY
    whole = detect_tiled(detector, frame)
    assert len(found) == len(whole) >= 1
    assert np.allclose(np.sort(found.boxes, axis=0), np.sort(whole.boxes, axis=0), atol=1)


def test_a_bad_proposals_card_names_the_file(verified_detector: Path, tmp_path: Path) -> None:  # noqa: F811
    with_sky_proposals(verified_detector.parent, tmp_path, {"high_sigma": 2.0})
    with pytest.raises(ModelError, match=r"tiny_verifier_int8\.json.*sky_proposals"):
        Verifier(tmp_path / "tiny_verifier_int8.tflite")
