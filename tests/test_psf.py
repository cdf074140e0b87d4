"""The frame's PSF width (edge.psf) measured on small noisy arrays, and the verifier's re-scoring with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.interpreter import ModelError
from edge.models import Detections, Detector, Verifier, candidate_priors
from edge.proposals import SkyProposalSettings, sky_sources
from edge.psf import (
    FEATURE_COUNT,
    ConcentrationMeasurement,
    PsfCalibration,
    PsfMeasurement,
    psf_features,
    source_concentration,
)
from tests.test_proposals import add_gaussian, as_frame, noisy_sky
from tests.test_verifier import WHITE, verified_detector  # noqa: F401 (a fixture)

FWHM_PER_SIGMA = 2 * np.sqrt(2 * np.log(2))


def star_field(fwhm: float, stars: int = 12, seed: int = 0) -> np.ndarray:
    """Stars of one FWHM at sub-pixel positions, three larger galaxies, six hot pixels (a third of the
    compact sources: they would set the 0.2 quantile) and one saturated star."""
    rng = np.random.default_rng(seed)
    image = noisy_sky(320, 240, sky=20, sigma=2, seed=seed)
    spots = [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)) for y in (30, 90, 150, 210)
             for x in (30, 100, 170, 240, 300)]  # fmt: skip
    for x, y in spots[:stars]:
        add_gaussian(image, x, y, amplitude=rng.uniform(80, 150), sigma=fwhm / FWHM_PER_SIGMA)
    for x, y in spots[stars : stars + 3]:
        add_gaussian(image, x, y, amplitude=60, sigma=3 * fwhm / FWHM_PER_SIGMA)
    for x, y in spots[stars + 3 : stars + 4]:
        add_gaussian(image, x, y, amplitude=900, sigma=fwhm / FWHM_PER_SIGMA)  # clipped at 255
    for k in range(6):
        image[5 + 7 * k, 60 + 31 * k] = 200
    return as_frame(image)


def measured(frame: np.ndarray) -> float:
    return sky_sources(frame, SkyProposalSettings(), PsfMeasurement()).psf_fwhm


@pytest.mark.parametrize("fwhm", [2.5, 3.5, 4.5])
def test_the_psf_width_is_measured_from_stars_not_hot_pixels_galaxies_or_saturation(fwhm: float) -> None:
    # Half-maximum areas in whole pixels: 2.26-4.51 here for 2.5-4.5 (1.10-1.22 x on simulated frames).
    assert fwhm * 0.85 <= measured(star_field(fwhm)) <= fwhm * 1.25


def test_a_wider_psf_reads_wider_and_too_few_stars_read_nothing() -> None:
    assert measured(star_field(4.0, seed=1)) > 1.3 * measured(star_field(2.5, seed=1))
    assert np.isnan(measured(star_field(3.0, stars=1)))  # four sources measured, under min_stars
    assert np.isnan(sky_sources(star_field(3.0), SkyProposalSettings()).psf_fwhm)  # not asked for


def test_the_stars_that_set_the_width_are_stars() -> None:
    sources = sky_sources(star_field(3.0), SkyProposalSettings(), PsfMeasurement())
    centres = np.column_stack(
        [sources.star_boxes[:, 0::2].mean(axis=1), sources.star_boxes[:, 1::2].mean(axis=1)]
    )
    # star_field's grid: the first 12 places hold stars, the next three galaxies, then a saturated star.
    grid = np.array([(x, y) for y in (30, 90, 150, 210) for x in (30, 100, 170, 240, 300)], float)
    nearest = np.abs(centres[:, None, :] - grid[None]).max(axis=2).argmin(axis=1)
    assert len(centres) >= 2 and (nearest < 12).all()
    assert not len(sky_sources(star_field(3.0, stars=1), SkyProposalSettings(), PsfMeasurement()).star_boxes)


def test_features_are_the_terms_then_their_squares_and_products() -> None:
    logits = np.array([0.5, -2.0])
    priors = candidate_priors(np.array([[0, 0, 8, 32], [0, 0, 16, 16]], np.float32), np.array([0.3, 0.6]))
    features = psf_features(logits, priors, 8.0)
    assert features.shape == (2, FEATURE_COUNT)
    assert np.allclose(features[:, :4], [[0.5, -1, 1, 1], [-2, 0, 0, 1]])
    # logit^2, logit*width, ..., psf^2: each product of two terms once.
    assert np.allclose(features[0, 4:], [0.25, -0.5, 0.5, 0.5, 1, -1, -1, 1, 1, 1])


def calibration(
    logit: float = 1.0, psf: float = 0.0, intercept: float = 0.0, concentration: float | None = None
) -> dict:
    """A card entry whose model is linear: these weights on the logit, the PSF term and (when given,
    with the default measurement) the concentration, zero on the rest."""
    coefficients = [0.0] * (FEATURE_COUNT if concentration is None else 20)
    coefficients[0], coefficients[3] = logit, psf
    entry = {"intercept": intercept, "coefficients": coefficients, "measurement": {"min_stars": 5}}
    if concentration is not None:
        coefficients[4] = concentration
        entry["concentration"] = {"inner_radius": 1.5, "outer_radius": 5.0}
    return entry


def gaussian_image(spots: list[tuple[float, float, float]], shape: tuple[int, int] = (40, 60)) -> np.ndarray:
    """Noise-free sky-subtracted pixels with Gaussians (x, y, sigma) of unit flux."""
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape, np.float32)
    for x, y, sigma in spots:
        image += np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    return image


def test_concentration_is_seps_aperture_sums_at_the_peak() -> None:
    sep = pytest.importorskip("sep")
    residual = gaussian_image([(15.0, 12.0, 0.9), (40.0, 20.0, 2.5), (1.0, 38.0, 1.2)])
    measurement = ConcentrationMeasurement(inner_radius=1.5, outer_radius=4.5)  # no pixel centre on a rim
    # Boxes off centre (the peak is searched in their central half), and one at the frame's corner.
    boxes = np.array([[11, 9, 21, 17], [33, 13, 49, 29], [-3, 34, 6, 42]], np.float32)
    found = source_concentration(residual, residual, boxes, measurement)
    # sep with one sample per pixel counts a pixel whose centre lies in the circle, as edge.psf does;
    # outside the frame is zero: pad the frame.
    padded = np.pad(residual.astype(np.float64), 8)
    peaks_x, peaks_y = np.array([15.0, 40.0, 1.0]) + 8, np.array([12.0, 20.0, 38.0]) + 8
    inner = sep.sum_circle(padded, peaks_x, peaks_y, 1.5, subpix=1)[0]
    outer = sep.sum_circle(padded, peaks_x, peaks_y, 4.5, subpix=1)[0]
    assert found == pytest.approx(inner / outer, rel=1e-5)
    # The compact source holds more of its light near its peak than the wide one in a box of its size.
    assert found[0] > 0.5 > found[1]


def test_concentration_reads_the_same_star_at_any_brightness_and_is_clipped_when_noisy() -> None:
    star = gaussian_image([(20.0, 20.0, 1.3)])
    box = np.array([[15, 15, 26, 26]], np.float32)
    measurement = ConcentrationMeasurement()
    assert source_concentration(50 * star, star, box, measurement) == pytest.approx(
        source_concentration(star, star, box, measurement), rel=1e-5
    )
    # Light that cancels out within the outer radius (a star on an over-subtracted sky): the ratio
    # would run off to infinity; it is clipped at 2.
    offsets = np.hypot(*np.mgrid[-20:20, -20:40])  # from the star at (20, 20)
    disc = offsets <= 5
    cancelled = star - disc * star[disc].sum() / disc.sum()
    assert abs(cancelled[disc].sum()) < 1e-6
    assert source_concentration(cancelled, star, box, measurement)[0] == 2.0


def test_the_calibration_scores_and_refuses_a_bad_card_entry() -> None:
    model = PsfCalibration.from_card(calibration(logit=1.0, psf=2.0, intercept=-1.0))
    priors = candidate_priors(np.array([[0, 0, 10, 10]], np.float32), np.array([0.3]))
    # log2(16 / 4) = 2: z = 1.5 + 2 * 2 - 1.
    assert model.scores(np.array([1.5]), priors, 16.0)[0] == pytest.approx(1 / (1 + np.exp(-4.5)))
    with pytest.raises(ValueError, match="14 coefficients"):
        PsfCalibration.from_card({"intercept": 0.0, "coefficients": [1.0]})
    with pytest.raises(ValueError, match="intercept"):
        PsfCalibration.from_card({"coefficients": [0.0] * FEATURE_COUNT})
    with pytest.raises(ValueError, match="quantile"):
        PsfCalibration.from_card({**calibration(), "measurement": {"quantile": 1.5}})
    # With a concentration the model has a fifth term: 20 weights, and the candidates' concentrations.
    with pytest.raises(ValueError, match="20 coefficients"):
        PsfCalibration.from_card({**calibration(), "concentration": {"inner_radius": 1.5}})
    with pytest.raises(ValueError, match="star_concentration_range"):
        PsfCalibration.from_card({**calibration(concentration=1.0), "star_concentration_range": [0.5, 0.4]})
    with pytest.raises(ValueError, match="inner_radius < outer_radius"):
        PsfCalibration.from_card({**calibration(concentration=1.0), "concentration": {"inner_radius": 6.0}})
    model = PsfCalibration.from_card(calibration(logit=1.0, psf=2.0, intercept=-1.0, concentration=-3.0))
    assert model.scores(np.array([1.5]), priors, 16.0, np.array([0.5]))[0] == pytest.approx(
        1 / (1 + np.exp(-3.0))
    )
    with pytest.raises(ValueError, match="come together"):
        model.scores(np.array([1.5]), priors, 16.0)


def with_verification(folder: Path, target: Path, **entries) -> Path:
    """A copy of the tiny verified detector whose verifier card's `verification` has these entries."""
    for path in folder.iterdir():
        shutil.copy(path, target / path.name)
    card_path = target / "tiny_verifier_int8.json"
    card = json.loads(card_path.read_text())
    card["verification"].update(entries)
    card_path.write_text(json.dumps(card))
    return target / "tiny_detector_int8.tflite"


def test_the_verifier_rescores_with_the_frames_psf(verified_detector: Path, tmp_path: Path) -> None:  # noqa: F811
    detector = Detector(
        with_verification(verified_detector.parent, tmp_path, psf_calibration=calibration(psf=3.0))
    )
    frame = star_field(3.0)
    frame[100:108, 120:128] = WHITE
    box = np.array([[120, 100, 128, 108]], np.float32)
    found = Detections(box, np.array([0.5], np.float32), np.zeros(1, int))
    raw = detector.rescore(frame, found).scores[0]
    logit = np.log(raw / (1 - raw))
    # Without a PSF width the verifier's own score stands; with one the calibration's: logit + 3 log2(w/4).
    sky = detector.sky(frame)
    psf = sky.psf_fwhm
    assert np.isfinite(psf)
    calibrated = detector.rescore(frame, found, sky).scores[0]
    assert calibrated == pytest.approx(1 / (1 + np.exp(-(logit + 3 * (np.log2(psf) - 2)))), abs=1e-5)
    # The card asks for no proposals, but the sky is still read for its PSF.
    assert detector.verifier.sky_proposals is None
    assert len(detector.with_proposals(found, detector.sky(frame))) == 1


def test_the_verifier_rescores_with_the_candidates_concentration_over_its_stars(
    verified_detector: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    # A small weight on the logit keeps the tiny verifier's confident score off the sigmoid's flat top.
    entry = {**calibration(logit=0.1, concentration=-4.0), "star_concentration_range": [0.3, 0.9]}
    detector = Detector(with_verification(verified_detector.parent, tmp_path, psf_calibration=entry))
    frame = star_field(3.0)
    frame[100:108, 120:128] = WHITE  # a flat square: its light is spread, unlike the stars'
    box = np.array([[120, 100, 128, 108]], np.float32)
    found = Detections(box, np.array([0.5], np.float32), np.zeros(1, int))
    raw = detector.rescore(frame, found).scores[0]
    sky = detector.sky(frame)
    concentration = sky.concentrations(box, ConcentrationMeasurement())[0]
    stars = sky.star_concentration(ConcentrationMeasurement())
    assert 0.05 < concentration < 0.5 < stars < 0.7  # FWHM 3: about 0.58 within 1.5 of 5 pixels
    expected = 1 / (1 + np.exp(-(0.1 * np.log(raw / (1 - raw)) - 4.0 * concentration / stars)))
    assert detector.rescore(frame, found, sky).scores[0] == pytest.approx(expected, abs=0.005)
    # A frame whose stars are more concentrated than any the model was fitted on keeps the verifier's score.
    sharper = {**entry, "star_concentration_range": [0.2, 0.5]}
    detector = Detector(with_verification(verified_detector.parent, tmp_path, psf_calibration=sharper))
    assert detector.rescore(frame, found, sky).scores[0] == pytest.approx(raw)


def test_rolling_tiles_verify_with_the_psf_of_the_sky_turn(verified_detector: Path, tmp_path: Path) -> None:  # noqa: F811
    from edge.tiling import RollingTiles, detect_tiled

    detector = Detector(
        with_verification(verified_detector.parent, tmp_path, psf_calibration=calibration(psf=-2.0))
    )
    frame = star_field(3.0)
    frame[100:108, 120:128] = WHITE
    rolling = RollingTiles(detector, per_frame=1)
    found = rolling.detect(frame)
    assert rolling.tiles[-1] == RollingTiles.SKY and np.isfinite(rolling.sky.psf_fwhm)
    whole = detect_tiled(detector, frame)
    assert len(found) == len(whole) >= 1
    assert np.allclose(np.sort(found.scores), np.sort(whole.scores), atol=1e-6)


def test_a_bad_psf_calibration_names_the_card(verified_detector: Path, tmp_path: Path) -> None:  # noqa: F811
    with_verification(verified_detector.parent, tmp_path, psf_calibration={"coefficients": [1.0]})
    with pytest.raises(ModelError, match=r"tiny_verifier_int8\.json.*14 coefficients"):
        Verifier(tmp_path / "tiny_verifier_int8.tflite")
