"""Draft labelImg boxes from classical source extraction with sep (SExtractor as a library).

Background is modelled and subtracted on a mesh, sources are extracted above a threshold
in units of the background RMS and deblended; each source's half-light radius is compared
with the frame's PSF (estimated from its most compact bright sources) to separate point
sources (stars) from extended ones (galaxies). Boxes enclose the Kron ellipse (2.5 Kron
radii, which holds over 90% of a galaxy's light) and the source's isophotal footprint.
The drafts are meant for review in labelImg, not as truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from annotations.records import AnnotationError, Box, ImageAnnotation
from annotations.voc import write_voc
from galaxy_edge.errors import GalaxyEdgeError, MissingDependencyError
from galaxy_edge.files import FITS_SUFFIXES


@dataclass
class ProposalSettings:
    # Tuned on simulated frames (seeds 1-3, README): 2 sigma is the simulation's own detection limit
    # (15 pixels 2 sky sigma up), and a low deblending contrast splits galaxies from their neighbours.
    thresh_sigma: float = 2.0  # detection threshold in background RMS
    minarea: int = 8  # pixels above threshold
    deblend_nthresh: int = 32
    deblend_cont: float = 0.0005
    background_mesh: int = 64  # pixels per background cell (the cold pass; at least a sixth of the frame)
    hot_mesh: int | None = 24  # the hot pass's background cell; None: one pass
    filter_fwhm: float | None = None  # pixels: a Gaussian detection filter; None: sep's 3x3 default
    kron_factor: float = 2.5
    # Half-light radius / the stellar locus's below this: a point source. Low S/N galaxies measure
    # compact; a draft had better call a doubtful source a galaxy (a reviewer deletes a box faster
    # than drawing one), so the cut sits at the locus itself.
    star_radius_ratio: float = 1.0
    psf_fwhm: float | None = None  # pixels; estimated from the frame when None
    saturation: float | None = None  # data value; 8-bit images saturate at 255
    min_box: int = 4  # pixels
    include_stars: bool = False
    label: str = "galaxy"
    star_label: str = "star"


@dataclass
class Source:
    x: float
    y: float
    flux: float
    snr: float
    a: float
    b: float
    theta: float
    half_light_radius: float
    peak: float
    saturated: bool
    box: tuple[float, float, float, float]
    kind: str  # "galaxy" or "star"


def _sep():
    try:
        import sep
    except ImportError:
        raise MissingDependencyError("sep", "train", "source extraction") from None
    return sep


@dataclass
class Frame:
    data: np.ndarray  # 2-D float32
    saturation: float | None  # data value where pixels clip; None if unknown
    depth: int  # colour channels summed into data
    noise_floor: float  # the background RMS is never taken below this
    saturated: np.ndarray | None = None  # pixels clipped in any channel


def load_frame(path: Path | str) -> Frame:
    """A 2-D float32 frame with its saturation level, depth and noise floor.

    FITS files are read with astropy (first image HDU); other images are summed over
    their colour channels, which keeps every source's signal.
    """
    path = Path(path)
    if path.name.lower().endswith(FITS_SUFFIXES):
        try:
            from astropy.io import fits
        except ImportError:
            raise MissingDependencyError("astropy", "train", "reading FITS frames") from None
        try:
            with fits.open(path, memmap=False) as hdus:
                data = next((h.data for h in hdus if h.data is not None and h.data.ndim >= 2), None)
                saturation = next((h.header.get("SATURATE") for h in hdus if "SATURATE" in h.header), None)
        except OSError as error:
            raise AnnotationError(path, f"FITS file unreadable ({error})") from None
        if data is None:
            raise AnnotationError(path, "FITS file has no image data")
        data = np.asarray(data, dtype=np.float32)
        while data.ndim > 2:
            data = data[0]
        return Frame(np.ascontiguousarray(data), saturation, 1, 0.0)
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB") if image.mode not in ("L", "I;16", "I", "F") else image)
    except OSError as error:
        raise AnnotationError(path, f"image unreadable ({error})") from None
    depth = array.shape[2] if array.ndim == 3 else 1
    data = array.astype(np.float32).sum(axis=2) if array.ndim == 3 else array.astype(np.float32)
    if array.dtype != np.uint8:
        return Frame(np.ascontiguousarray(data), None, depth, 0.0)
    # 8-bit camera frames often clip the sky at zero, which hides its noise from the
    # background estimate: one grey level per channel is the least noise they carry.
    clipped = (array.max(axis=2) if array.ndim == 3 else array) >= 254
    return Frame(np.ascontiguousarray(data), 255.0 * depth, depth, float(depth), clipped)


def _ellipse_half_extent(a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half width and half height of the box that bounds an ellipse."""
    cos, sin = np.cos(theta), np.sin(theta)
    return np.hypot(a * cos, b * sin), np.hypot(a * sin, b * cos)


def estimate_psf_radius(radii: np.ndarray, snr: np.ndarray, saturated: np.ndarray) -> float | None:
    """Half-light radius of the PSF: the median of the most compact third of bright,
    unsaturated sources (stars are the most compact objects in a frame)."""
    bright = np.sort(radii[(snr > 20) & ~saturated & np.isfinite(radii) & (radii > 0)])
    if len(bright) < 3:
        return None
    return float(np.median(bright[: max(3, len(bright) // 3)]))


def _gaussian_kernel(fwhm: float) -> np.ndarray:
    """A detection filter matched to a seeing disc of this FWHM (SExtractor's practice)."""
    sigma = fwhm / 2.3548
    radius = max(1, int(np.ceil(2 * sigma)))
    axis = np.arange(-radius, radius + 1)
    kernel = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _clipped_core_radius(clipped: np.ndarray, objects: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Radius of the disc with the area of the clipped pixels inside each object's footprint box."""
    radius = np.zeros(len(objects), np.float64)
    for i in np.flatnonzero(which):
        o = objects[i]
        area = clipped[o["ymin"] : o["ymax"] + 1, o["xmin"] : o["xmax"] + 1].sum()
        radius[i] = np.sqrt(area / np.pi)
    return radius


def stellar_locus(
    flux: np.ndarray, radius: np.ndarray, snr: np.ndarray, roundness: np.ndarray, psf_radius: float
) -> np.ndarray:
    """The half-light radius of a point source at each source's flux.

    Round sources are binned by log flux; in each bin the stellar locus is the 20th
    percentile of their radii (stars are the most compact round objects at any
    brightness), forced to grow with flux and never to fall below the PSF's radius.
    """
    good = np.isfinite(radius) & (radius > 0) & (flux > 0) & (snr > 5) & (roundness > 0.8)
    if good.sum() < 20:
        return np.full(len(flux), psf_radius)
    log_flux = np.log10(np.maximum(flux, 1e-9))
    edges = np.quantile(log_flux[good], np.linspace(0, 1, 9))
    centres, levels = [], []
    for low, high in pairwise(edges):
        members = good & (log_flux >= low) & (log_flux <= high)
        if members.sum() >= 5:
            centres.append((low + high) / 2)
            levels.append(np.percentile(radius[members], 20))
    if not levels:
        return np.full(len(flux), psf_radius)
    levels = np.maximum.accumulate(np.maximum(levels, psf_radius))
    return np.interp(log_flux, centres, levels)


def _extract(sep, subtracted: np.ndarray, rms: float, settings: ProposalSettings) -> np.ndarray:
    try:
        return sep.extract(
            subtracted,
            settings.thresh_sigma,
            err=rms,
            minarea=settings.minarea,
            deblend_nthresh=settings.deblend_nthresh,
            deblend_cont=settings.deblend_cont,
            **({"filter_kernel": _gaussian_kernel(settings.filter_fwhm)} if settings.filter_fwhm else {}),
        )
    except Exception as error:  # sep raises plain Exception for pixel-stack overflows
        raise GalaxyEdgeError(f"source extraction failed: {error}") from None


def _photometry(sep, subtracted: np.ndarray, objects: np.ndarray, rms: float, settings: ProposalSettings):
    """Shape, Kron radius, flux, half-light radius and S/N of each object (sep's photometry)."""
    x, y = objects["x"], objects["y"]
    a = np.maximum(np.nan_to_num(objects["a"], nan=0.5), 0.5)
    b = np.minimum(np.maximum(np.nan_to_num(objects["b"], nan=0.5), 0.5), a)
    theta = np.clip(np.nan_to_num(objects["theta"]), -np.pi / 2, np.pi / 2)
    if len(objects) == 0:
        empty = np.zeros(0)
        return a, b, theta, empty, empty, empty, empty
    kron, _ = sep.kron_radius(subtracted, x, y, a, b, theta, 6.0)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 2.5)
    kron = np.maximum(kron, 1.75)  # sep's recommended floor for faint sources
    flux, _, _ = sep.sum_ellipse(subtracted, x, y, a, b, theta, settings.kron_factor * kron, subpix=1)
    radius, _ = sep.flux_radius(
        subtracted, x, y, settings.kron_factor * kron * a, 0.5, normflux=np.maximum(flux, 1e-6), subpix=5
    )
    noise = rms * np.sqrt(np.pi * a * b * (settings.kron_factor * kron) ** 2)
    snr = flux / np.maximum(noise, 1e-6)
    return a, b, theta, kron, flux, radius, snr


def extract_sources(
    data: np.ndarray,
    settings: ProposalSettings | None = None,
    saturation: float | None = None,
    noise_floor: float = 0.0,
    saturated_pixels: np.ndarray | None = None,
) -> tuple[list[Source], float]:
    """Sources in a 2-D frame and the PSF half-light radius used to classify them."""
    settings = settings or ProposalSettings()
    sep = _sep()
    data = np.ascontiguousarray(data, dtype=np.float32)
    height, width = data.shape
    sep.set_extract_pixstack(max(300_000, data.size // 2))
    sep.set_sub_object_limit(4096)
    # Two passes, as in the "cold" and "hot" modes of large galaxy surveys (GEMS: Rix et al. 2004;
    # GALAPAGOS): the cold pass models the sky on a mesh larger than the galaxies, or their light is
    # taken for sky; the hot pass models it on a fine mesh, which removes big galaxies' halos, so the
    # small galaxies inside a halo stand out. Hot sources that a cold source does not already cover
    # are added.
    mesh = max(16, min(max(settings.background_mesh, min(height, width) // 6), min(height, width) // 2))
    background = sep.Background(data, bw=mesh, bh=mesh, fw=3, fh=3)
    subtracted = data - background.back()
    rms = max(float(background.globalrms), noise_floor, 1e-6)
    objects = _extract(sep, subtracted, rms, settings)
    measured = [_photometry(sep, subtracted, objects, rms, settings)]
    if settings.hot_mesh and settings.hot_mesh < mesh and len(objects):
        hot_background = sep.Background(data, bw=settings.hot_mesh, bh=settings.hot_mesh, fw=3, fh=3)
        hot_subtracted = data - hot_background.back()
        hot = _extract(sep, hot_subtracted, rms, settings)
        if len(hot):
            distance = np.hypot(
                hot["x"][:, None] - objects["x"][None, :], hot["y"][:, None] - objects["y"][None, :]
            )
            covered = distance <= np.maximum(3.0, 2.0 * np.asarray(hot["a"]))[:, None]
            hot = hot[~covered.any(axis=1)]
        if len(hot):
            measured.append(_photometry(sep, hot_subtracted, hot, rms, settings))
            objects = np.concatenate([objects, hot])
    if len(objects) == 0:
        return [], float("nan")
    x, y = objects["x"], objects["y"]
    a, b, theta, kron, flux, radius, snr = (np.concatenate(parts) for parts in zip(*measured, strict=True))
    level = settings.saturation or saturation
    peak_total = (
        objects["peak"]
        + background.back()[y.astype(int).clip(0, height - 1), x.astype(int).clip(0, width - 1)]
    )
    saturated = peak_total >= 0.98 * level if level else np.zeros(len(x), bool)
    if saturated_pixels is not None:
        saturated |= saturated_pixels[
            objects["ycpeak"].clip(0, height - 1), objects["xcpeak"].clip(0, width - 1)
        ]

    if settings.psf_fwhm:
        psf_radius = settings.psf_fwhm / 2
    else:
        psf_radius = estimate_psf_radius(radius, snr, saturated) or 1.5
    # A point source is as compact as the PSF. Clipping flattens a saturated star's core
    # and widens its measured profile, so a saturated source is a star when its light is
    # no more extended than its clipped core plus the PSF.
    # In stretched 8-bit frames a star's measured size grows with its brightness, so each
    # source is compared with the stellar locus at its own flux, not with one PSF size.
    locus = stellar_locus(flux, radius, snr, b / a, psf_radius)
    compact = radius < settings.star_radius_ratio * locus + 0.3
    if saturated.any():
        core = (
            _clipped_core_radius(saturated_pixels, objects, saturated) if saturated_pixels is not None else 0
        )
        compact |= saturated & (radius < 1.3 * (core + psf_radius))
    # The PSF is round: a compact source that is clearly elongated is a small galaxy.
    elongated = (b / a < 0.7) & (snr > 15)
    star = compact & ~elongated
    # Cosmic rays and hot pixels are sharper than any real source; spikes and bleed trails
    # are lines. Neither is proposed.
    artifact = (radius < 0.5 * psf_radius) | ((a / b > 6) & (b < 1.0))

    half_w, half_h = _ellipse_half_extent(
        settings.kron_factor * kron * a, settings.kron_factor * kron * b, theta
    )
    x1 = np.minimum(x - half_w, objects["xmin"] - 0.5)
    y1 = np.minimum(y - half_h, objects["ymin"] - 0.5)
    x2 = np.maximum(x + half_w, objects["xmax"] + 0.5)
    y2 = np.maximum(y + half_h, objects["ymax"] + 0.5)
    grow = np.maximum(0, settings.min_box - (x2 - x1)) / 2
    x1, x2 = x1 - grow, x2 + grow
    grow = np.maximum(0, settings.min_box - (y2 - y1)) / 2
    y1, y2 = y1 - grow, y2 + grow
    sources = [
        Source(
            x=float(x[i]),
            y=float(y[i]),
            flux=float(flux[i]),
            snr=float(snr[i]),
            a=float(a[i]),
            b=float(b[i]),
            theta=float(theta[i]),
            half_light_radius=float(radius[i]),
            peak=float(peak_total[i]),
            saturated=bool(saturated[i]),
            box=(
                float(max(0.0, np.floor(x1[i]))),
                float(max(0.0, np.floor(y1[i]))),
                float(min(width, np.ceil(x2[i]))),
                float(min(height, np.ceil(y2[i]))),
            ),
            kind="star" if star[i] else "galaxy",
        )
        for i in range(len(x))
        if not artifact[i]
    ]
    return sources, psf_radius


def propose_annotation(image_path: Path | str, settings: ProposalSettings | None = None) -> ImageAnnotation:
    """A draft labelImg annotation for one image."""
    settings = settings or ProposalSettings()
    image_path = Path(image_path)
    frame = load_frame(image_path)
    sources, _ = extract_sources(frame.data, settings, frame.saturation, frame.noise_floor, frame.saturated)
    height, width = frame.data.shape
    boxes = []
    for source in sources:
        if source.kind == "star" and not settings.include_stars:
            continue
        x1, y1, x2, y2 = source.box
        boxes.append(
            Box(
                name=settings.label if source.kind == "galaxy" else settings.star_label,
                xmin=x1,
                ymin=y1,
                xmax=x2,
                ymax=y2,
                truncated=x1 <= 0 or y1 <= 0 or x2 >= width or y2 >= height,
            )
        )
    return ImageAnnotation(
        filename=image_path.name,
        width=width,
        height=height,
        depth=frame.depth,
        boxes=boxes,
        folder=image_path.parent.name,
        path=str(image_path.resolve()),
    )


def propose_files(
    images: list[Path],
    out: Path | str,
    settings: ProposalSettings | None = None,
    progress: Callable[[Path, ImageAnnotation], None] | None = None,
) -> list[Path]:
    """Write one draft VOC XML per image into out; returns the written paths."""
    out = Path(out)
    written = []
    for image in images:
        annotation = propose_annotation(image, settings)
        written.append(write_voc(annotation, out / f"{Path(image).stem}.xml"))
        if progress:
            progress(image, annotation)
    return written
