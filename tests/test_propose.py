"""Draft boxes from sep on a small frame with known stars and galaxies (numpy-rendered)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotations.propose import ProposalSettings, extract_sources, load_frame, propose_annotation
from annotations.voc import read_voc

pytest.importorskip("sep")

PSF_SIGMA = 1.3


def _frame(seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]], list[tuple[float, float, float]]]:
    """A 300x400 frame: 25 stars (Gaussian PSF) and 12 exponential-disk galaxies, sky noise 2."""
    rng = np.random.default_rng(seed)
    height, width = 300, 400
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.full((height, width), 10.0, np.float32)
    stars, galaxies = [], []
    for _ in range(25):
        x, y = rng.uniform(10, width - 10), rng.uniform(10, height - 10)
        flux = rng.uniform(400, 3000)
        frame += (
            flux / (2 * np.pi * PSF_SIGMA**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * PSF_SIGMA**2))
        )
        stars.append((x, y))
    for _ in range(12):
        x, y = rng.uniform(30, width - 30), rng.uniform(30, height - 30)
        scale, q, angle = rng.uniform(2.5, 6), rng.uniform(0.4, 1), rng.uniform(0, np.pi)
        dx, dy = xx - x, yy - y
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / q
        flux = rng.uniform(3000, 9000)
        frame += flux / (2 * np.pi * scale**2 * q) * np.exp(-np.hypot(u, v) / scale)
        galaxies.append((x, y, scale))
    frame += rng.normal(0, 2, frame.shape).astype(np.float32)
    return frame, stars, galaxies


def test_sources_are_found_and_separated_into_stars_and_galaxies() -> None:
    frame, stars, galaxies = _frame()
    sources, psf_radius = extract_sources(frame, ProposalSettings())
    assert psf_radius == pytest.approx(PSF_SIGMA * 1.1774, rel=0.25)  # Gaussian half-light radius

    def nearest(x: float, y: float):
        return min(sources, key=lambda s: np.hypot(s.x - x, s.y - y))

    found_galaxies = [nearest(x, y) for x, y, _ in galaxies]
    recall = np.mean(
        [
            s.kind == "galaxy" and np.hypot(s.x - x, s.y - y) < 3
            for s, (x, y, _) in zip(found_galaxies, galaxies, strict=True)
        ]
    )
    star_purity = np.mean([nearest(x, y).kind == "star" for x, y in stars])
    assert recall >= 0.9
    assert star_purity >= 0.8
    # Each galaxy box holds at least 90% of its light: for an exponential disk that is
    # the light inside 3.9 scale lengths, so the box must reach that far along the minor axis at least.
    for source, (x, y, _scale) in zip(found_galaxies, galaxies, strict=True):
        x1, y1, x2, y2 = source.box
        assert x1 < x < x2 and y1 < y < y2


def test_propose_writes_labelimg_xml(tmp_path: Path, run_cli) -> None:
    frame, _, galaxies = _frame(seed=1)
    image = tmp_path / "frame.png"
    Image.fromarray(np.clip(frame * 2, 0, 255).astype(np.uint8)).convert("RGB").save(image)
    code, out, _ = run_cli("annotations", "propose", image, "--out", tmp_path / "drafts", "--stars")
    assert code == 0 and "wrote 1 draft(s)" in out
    draft = read_voc(tmp_path / "drafts" / "frame.xml")
    assert (draft.width, draft.height, draft.filename) == (400, 300, "frame.png")
    assert {b.name for b in draft.boxes} == {"galaxy", "star"}
    hits = sum(
        any(b.name == "galaxy" and b.xmin < x < b.xmax and b.ymin < y < b.ymax for b in draft.boxes)
        for x, y, _ in galaxies
    )
    assert hits >= 0.9 * len(galaxies)
    # The draft passes the checker, so it can go straight to review.
    code, _, _ = run_cli("annotations", "check", tmp_path / "drafts", "--labels", "galaxy,star")
    assert code == 0  # the image lives elsewhere and is found through the draft's <path>
    assert propose_annotation(image).boxes


def test_load_frame_handles_fits(tmp_path: Path) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    fits.PrimaryHDU(data, header=fits.Header({"SATURATE": 5000.0})).writeto(tmp_path / "f.fits")
    frame = load_frame(tmp_path / "f.fits")
    assert frame.data.shape == (3, 4) and frame.saturation == 5000.0 and frame.depth == 1


def test_hot_pass_finds_small_galaxies_in_a_big_galaxys_halo() -> None:
    height, width = 400, 600
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def exponential(x: float, y: float, scale: float, flux: float, q: float = 1.0) -> np.ndarray:
        return flux / (2 * np.pi * scale**2 * q) * np.exp(-np.hypot(xx - x, (yy - y) / q) / scale)

    frame = np.full((height, width), 10, np.float32) + exponential(300, 200, 40, 3e6, 0.7)
    small = [(345, 220), (250, 175), (310, 260)]
    for x, y in small:
        frame += exponential(x, y, 2.5, 4000)
    frame += np.random.default_rng(0).normal(0, 2, frame.shape).astype(np.float32)

    def found(settings: ProposalSettings) -> list[bool]:
        sources, _ = extract_sources(frame, settings)
        return [min(np.hypot(s.x - x, s.y - y) for s in sources) < 2 for x, y in small]

    assert not all(found(ProposalSettings(hot_mesh=None)))  # the cold pass merges them into the halo
    assert all(found(ProposalSettings()))
