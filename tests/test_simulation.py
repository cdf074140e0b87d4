"""GalSim simulation: class-defining properties on small noise-free samples, exact frame
labels, determinism and the astroNN .h5 layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("galsim")

from annotations.check import check_dataset
from annotations.voc import read_voc
from galaxy_edge.schemes import get_scheme
from simulation.frames import FrameSettings, render_frame, simulate_frames
from simulation.morphology import make_galaxy
from simulation.render import draw_galaxy, seeing_psf
from simulation.stamps import StampSettings, class_labels, render_stamps, write_h5

SIZE = 96


def noise_free(scheme: str, class_name: str, seed: int, hlr: float = 12.0) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    galaxy = make_galaxy(scheme, class_name, rng, hlr)
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    draw_galaxy(image, galaxy, seeing_psf(1.5), SIZE / 2, SIZE / 2, 1.0, stamp_size=SIZE)
    return image.sum(axis=2), galaxy.truth


def moments(image: np.ndarray) -> tuple[float, float, float, float, float]:
    """(x, y, axis ratio, angle, total) from second moments of the light."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    total = image.sum()
    x, y = (image * xx).sum() / total, (image * yy).sum() / total
    cxx = (image * (xx - x) ** 2).sum() / total
    cyy = (image * (yy - y) ** 2).sum() / total
    cxy = (image * (xx - x) * (yy - y)).sum() / total
    eigen = np.linalg.eigvalsh([[cxx, cxy], [cxy, cyy]])
    angle = 0.5 * np.arctan2(2 * cxy, cxx - cyy)
    return x, y, float(np.sqrt(eigen[0] / eigen[1])), angle, total


def axis_ratio(scheme: str, class_name: str, n: int = 12) -> np.ndarray:
    return np.array([moments(noise_free(scheme, class_name, seed)[0])[2] for seed in range(n)])


def arm_strength(image: np.ndarray, hlr: float) -> float:
    """Relative scatter of the light around ellipses (deprojected with the light's moments),
    between 0.6 and 2 half-light radii: near 0 for smooth profiles, large with arms."""
    x, y, q, angle, _ = moments(image)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    u = (xx - x) * np.cos(angle) + (yy - y) * np.sin(angle)
    v = (-(xx - x) * np.sin(angle) + (yy - y) * np.cos(angle)) / q
    radius = np.hypot(u, v)
    scatter = []
    for r in np.linspace(0.6 * hlr, 2 * hlr, 8):
        ring = image[(radius > r - 1) & (radius < r + 1)]
        if len(ring) > 10:
            scatter.append(ring.std() / ring.mean())
    return float(np.mean(scatter))


def light_peaks(image: np.ndarray) -> int:
    """Local maxima above 10% of the brightest, at least 4 pixels apart."""
    from scipy.ndimage import maximum_filter

    peaks = (image == maximum_filter(image, size=9)) & (image > 0.1 * image.max())
    return int(peaks.sum())


def test_smooth_classes_order_by_axis_ratio() -> None:
    round_q = axis_ratio("decals", "round_smooth")
    between_q = axis_ratio("decals", "in_between_round_smooth")
    cigar_q = axis_ratio("decals", "cigar_smooth")
    assert np.median(cigar_q) < np.median(between_q) < np.median(round_q)
    assert cigar_q.max() < round_q.min()


@pytest.mark.parametrize("scheme", ["decals", "sdss"])
def test_edge_on_disks_are_elongated(scheme: str) -> None:
    assert np.median(axis_ratio(scheme, "edge_on_no_bulge")) < 0.35
    # A bulge makes edge-on disks rounder, but they stay flatter than round ellipticals.
    with_bulge = "edge_on_with_bulge" if scheme == "decals" else "edge_on_rounded_bulge"
    assert np.median(axis_ratio(scheme, with_bulge)) < np.median(axis_ratio(scheme, "edge_on_no_bulge")) + 0.3


def test_spiral_arms_present_in_spirals_and_absent_in_smooth_galaxies() -> None:
    spirals = [
        arm_strength(*_with_hlr("decals", c, s))
        for c in ("unbarred_tight_spiral", "unbarred_loose_spiral", "barred_spiral")
        for s in range(6)
    ]
    smooth = [
        arm_strength(*_with_hlr("decals", c, s))
        for c in ("round_smooth", "in_between_round_smooth")
        for s in range(6)
    ]
    # Arm contrast spans faint to prominent, as in real spirals; smooth profiles leave only the
    # measurement's own scatter (moment deprojection, 2-pixel rings).
    assert np.median(spirals) > 2 * np.median(smooth)
    assert np.mean(np.array(spirals) > np.percentile(smooth, 90)) >= 0.75


def _with_hlr(scheme: str, class_name: str, seed: int) -> tuple[np.ndarray, float]:
    image, truth = noise_free(scheme, class_name, seed)
    return image, truth["hlr"]


def test_mergers_have_two_light_peaks_and_round_galaxies_one() -> None:
    mergers = [light_peaks(noise_free("decals", "merging", s)[0]) for s in range(12)]
    rounds = [light_peaks(noise_free("decals", "round_smooth", s)[0]) for s in range(6)]
    assert np.mean(np.array(mergers) >= 2) >= 0.75
    assert rounds == [1] * 6


def test_class_counts_follow_real_proportions_or_balance() -> None:
    scheme = get_scheme("sdss")
    labels = class_labels(1000, "sdss", balanced=False, seed=0)
    expected = np.array(scheme.proportions) * 1000
    assert np.abs(np.bincount(labels, minlength=10) - expected).max() <= 1
    assert np.bincount(class_labels(1000, "decals", balanced=True, seed=0)).tolist() == [100] * 10


@pytest.mark.slow
def test_stamps_are_deterministic_across_worker_counts_and_written_like_astronn(tmp_path: Path) -> None:
    import h5py

    settings = StampSettings(scheme="decals", size=48, seed=5)
    one, labels_one, _ = render_stamps(40, settings, workers=1)
    two, labels_two, _ = render_stamps(40, settings, workers=2)
    assert np.array_equal(one, two) and np.array_equal(labels_one, labels_two)
    assert one.dtype == np.uint8 and one.shape == (40, 48, 48, 3)
    assert not np.array_equal(one, render_stamps(40, StampSettings(size=48, seed=6), workers=1)[0])
    path = write_h5(tmp_path / "sim.h5", one, labels_one, "decals", 5)
    with h5py.File(path) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (40, 48, 48, 3)
        assert f["ans"].dtype == np.uint8 and np.array_equal(f["ans"][:], labels_one)


def test_every_stamp_class_renders_for_both_schemes() -> None:
    for scheme in ("decals", "sdss"):
        for label, name in enumerate(get_scheme(scheme).names):
            from simulation.stamps import render_stamp

            image, truth = render_stamp(StampSettings(scheme=scheme), label, label)
            assert truth["class"] == name and image.shape == (69, 69, 3)
            centre = image[30:39, 30:39].astype(float).mean()
            assert centre > image[:6, :6].astype(float).mean() + 20, (scheme, name)  # galaxy at the centre


@pytest.mark.slow
def test_frames_have_exact_boxes_and_pass_the_checker(tmp_path: Path) -> None:
    settings = FrameSettings(width=480, height=320, seed=3, stars=True, fits=True)
    truth_csv = simulate_frames(3, settings, tmp_path, workers=1)
    assert check_dataset(tmp_path, labels=["galaxy", "star"]).ok
    import csv

    rows = list(csv.DictReader(truth_csv.open()))
    galaxies = [r for r in rows if r["kind"] == "galaxy"]
    assert len(galaxies) >= 3 * settings.min_galaxies and any(r["kind"] == "star" for r in rows)
    # Boxes never exceed the 95%-light box; bright objects the frame does not cut keep most
    # of their light inside what is visible above the noise.
    whole = [r for r in rows if r["truncated"] == "0"]
    assert max(float(r["flux_in_box"]) for r in whole) <= 0.96
    bright = [float(r["flux_in_box"]) for r in whole if float(r["snr"]) >= 200 and r["difficult"] == "0"]
    assert bright and min(bright) >= 0.6
    assert any(r["difficult"] == "1" for r in rows) and any(r["difficult"] == "0" for r in galaxies)
    first = read_voc(tmp_path / "frame_00000.xml")
    assert (first.width, first.height) == (480, 320) and {b.name for b in first.boxes} == {"galaxy", "star"}
    assert (tmp_path / "frame_00000.fits").is_file()
    image, _, _ = render_frame(settings, 0)
    again, _, _ = render_frame(settings, 0)
    assert np.array_equal(image, again) and image.shape == (320, 480, 3)


def test_visible_box_cuts_the_light_box_to_what_stands_above_the_noise() -> None:
    from simulation.frames import light_box, visible_box

    yy, xx = np.mgrid[0:101, 0:101]
    faint_wide = 3.0 * np.exp(-np.hypot(xx - 50, yy - 50) / 12)  # exponential disk, peak 3 sigma
    light = light_box(10, 20, faint_wide)
    box = visible_box(10, 20, faint_wide, 1.0, light)
    radius = 12 * np.log(3.0)  # where the profile falls to 1
    assert light[2] - light[0] > 2 * radius + 20  # the 95% light reaches far into the noise
    assert abs((box[2] - box[0]) - 2 * radius) <= 2 and box[0] >= light[0] and box[2] <= light[2]
    invisible = np.full((9, 9), 0.1)
    assert visible_box(0, 0, invisible, 1.0, (0, 0, 9, 9)) == (0, 0, 9, 9)


def test_galaxy10_labels_name_each_class(tmp_path: Path) -> None:
    settings = FrameSettings(width=256, height=192, seed=1, labels="galaxy10", min_galaxies=4, max_galaxies=6)
    simulate_frames(1, settings, tmp_path, workers=1)
    names = {b.name for b in read_voc(tmp_path / "frame_00000.xml").boxes}
    assert names and names <= set(get_scheme("decals").names)
