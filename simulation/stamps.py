"""Labelled Galaxy10-class stamps: one galaxy at the centre, SDSS-like seeing, sky noise and
colour stretch, occasional neighbouring stars and galaxies.

Stamp i of a run depends only on (seed, i), so results do not depend on the number of
worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxy_edge.schemes import get_scheme
from simulation.morphology import make_galaxy
from simulation.parallel import ordered_map
from simulation.render import STAR_COLORS, draw_galaxy, draw_star, lupton_parameters, seeing_psf, to_uint8

SKY_COLOR = np.array([1.0, 0.9, 0.65])


@dataclass(frozen=True)
class StampSettings:
    scheme: str = "decals"
    size: int = 69
    seed: int = 0
    balanced: bool = False
    neighbours: bool = True


def class_labels(n: int, scheme: str, balanced: bool, seed: int) -> np.ndarray:
    """n class indices: the scheme's real proportions (largest remainder) or equal counts, shuffled."""
    classes = get_scheme(scheme)
    weights = (
        np.full(classes.num_classes, 1 / classes.num_classes) if balanced else np.array(classes.proportions)
    )
    raw = weights * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n - counts.sum()]] += 1
    labels = np.repeat(np.arange(classes.num_classes), counts)
    np.random.default_rng([seed, 0xC1A55]).shuffle(labels)
    return labels.astype(np.uint8)


def render_stamp(settings: StampSettings, index: int, label: int) -> tuple[np.ndarray, dict]:
    """One stamp (size, size, 3) uint8 of class `label` and its truth."""
    rng = np.random.default_rng([settings.seed, index])
    size = settings.size
    unit = size / 69  # ranges below are tuned on Galaxy10 SDSS's 69-pixel stamps
    class_name = get_scheme(settings.scheme).names[label]
    hlr = float(np.exp(rng.uniform(np.log(5.5), np.log(15.0)))) * unit
    galaxy = make_galaxy(settings.scheme, class_name, rng, hlr)
    psf = seeing_psf(rng.uniform(2.0, 4.0) * unit)
    linear = np.zeros((size, size, 3), np.float32)
    centre = size / 2 + rng.uniform(-0.5, 0.5, 2)
    draw_galaxy(linear, galaxy, psf, centre[0], centre[1], 1.0, stamp_size=size + (size % 2))
    # Surface brightness sets the look: the noise is a fraction of the galaxy's mean
    # brightness inside its half-light radius.
    mean_sb = 0.5 / (np.pi * hlr**2)
    sky_sigma = mean_sb / float(np.exp(rng.uniform(np.log(30), np.log(300))))
    if settings.neighbours:
        _add_neighbours(rng, linear, psf, hlr, mean_sb, size)
    centre_luminance = float(linear[size // 2 - 2 : size // 2 + 3, size // 2 - 2 : size // 2 + 3].mean())
    noise = rng.normal(0, sky_sigma, linear.shape).astype(np.float32)
    # Survey cutouts are resampled and JPEG-compressed, which correlates neighbouring
    # pixels' noise: a light blur (and renormalisation) of the noise field imitates it.
    noise = _correlate(noise, rng.uniform(0.4, 0.9)) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    # A faint reddish sky pedestal, as SDSS colour cutouts have.
    linear += noise + (sky_sigma * rng.uniform(0.8, 2.0) * SKY_COLOR).astype(np.float32)
    # The stretch is chosen by how the result looks, as survey cutouts are: a core of
    # 130-220 counts and sky noise of 3-7 counts.
    stretch, q = lupton_parameters(centre_luminance, sky_sigma, rng.uniform(130, 220), rng.uniform(3.0, 7.0))
    image = to_uint8(linear, stretch=stretch, q=q)
    truth = {k: v for k, v in galaxy.truth.items() if np.isscalar(v)}
    truth.update({"index": index, "label": int(label), "psf_fwhm": float(psf.calculateFWHM())})
    return image, truth


def _correlate(noise: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-correlated noise with the same per-pixel standard deviation."""
    radius = 2
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps /= np.sqrt((taps**2).sum())  # unit power per axis keeps white noise's variance
    out = noise
    for axis in (0, 1):
        out = sum(
            np.roll(out, shift, axis=axis) * w
            for shift, w in zip(range(-radius, radius + 1), taps, strict=True)
        )
    return out.astype(np.float32)


def _add_neighbours(
    rng: np.random.Generator, linear: np.ndarray, psf, hlr: float, mean_sb: float, size: int
) -> None:
    """Field stars and small background galaxies away from the centre, as in real cutouts."""

    def away_from_centre() -> tuple[float, float]:
        while True:
            x, y = rng.uniform(0, size, 2)
            if np.hypot(x - size / 2, y - size / 2) > 1.5 * hlr + 4:
                return x, y

    if rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 4))):
            x, y = away_from_centre()
            flux = mean_sb * np.pi * hlr**2 * float(np.exp(rng.uniform(np.log(0.005), np.log(0.5))))
            draw_star(linear, psf, x, y, flux, STAR_COLORS[int(rng.integers(0, 3))])
    if rng.random() < 0.25:
        x, y = away_from_centre()
        small = make_galaxy(
            "decals",
            str(rng.choice(["round_smooth", "in_between_round_smooth", "edge_on_no_bulge"])),
            rng,
            hlr * rng.uniform(0.15, 0.4),
        )
        draw_galaxy(linear, small, psf, x, y, float(rng.uniform(0.02, 0.15)))


def _render_chunk(args: tuple[StampSettings, list[int], list[int]]) -> list[tuple[np.ndarray, dict]]:
    settings, indices, labels = args
    return [render_stamp(settings, i, lab) for i, lab in zip(indices, labels, strict=True)]


def render_stamps(
    n: int,
    settings: StampSettings,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(images (n, size, size, 3) uint8, labels (n,) uint8, truths) on all cores."""
    labels = class_labels(n, settings.scheme, settings.balanced, settings.seed)
    images = np.zeros((n, settings.size, settings.size, 3), np.uint8)
    truths: list[dict] = [{}] * n
    chunk = 32
    jobs = [
        (settings, list(range(s, min(s + chunk, n))), labels[s : s + chunk].tolist())
        for s in range(0, n, chunk)
    ]
    for job, done in zip(jobs, ordered_map(_render_chunk, jobs, workers), strict=True):
        for i, (image, truth) in zip(job[1], done, strict=True):
            images[i] = image
            truths[i] = truth
        if progress:
            progress(len(job[1]))
    return images, labels, truths


def write_h5(path: Path | str, images: np.ndarray, labels: np.ndarray, scheme: str, seed: int) -> Path:
    """astroNN's Galaxy10 layout: `images` uint8 (N, H, W, 3) and `ans` uint8 (N,)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, compression="gzip", compression_opts=4)
        f.create_dataset("ans", data=labels)
        f.attrs["scheme"] = scheme
        f.attrs["class_names"] = ",".join(get_scheme(scheme).names)
        f.attrs["source"] = f"galaxy-edge simulate stamps (GalSim), seed {seed}"
    return path


def write_image_folders(
    out: Path | str, images: np.ndarray, labels: np.ndarray, scheme: str, suffix: str = "png"
) -> Path:
    """One folder per class name (the image-folder layout the loaders read), stamps as PNG or JPEG."""
    from PIL import Image

    out = Path(out)
    names = get_scheme(scheme).names
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = out / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(
            folder / f"{i:06d}.{suffix}", **({"quality": 92} if suffix == "jpg" else {})
        )
    return out
