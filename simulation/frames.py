"""Wide sky frames with exact labels: stars (some saturated, with diffraction spikes and bleed
trails), galaxies of every class from a few pixels to hundreds, sky gradients, noise, hot
pixels and cosmic rays; camera-like 8-bit RGB plus optionally the linear data as FITS.

Every object is drawn by GalSim into its own noise-free stamp first, so its box is exact:
the smallest box holding 95% of the object's light along each axis, cut down to where the
object stands above the sky noise (what an annotator would draw; see visible_box). Detector
effects (bleeding, hot pixels, cosmic rays) are drawn with numpy.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import galsim
import numpy as np

from annotations.records import Box, ImageAnnotation
from annotations.voc import write_voc
from galaxy_edge.schemes import get_scheme
from simulation.morphology import GSPARAMS, make_galaxy
from simulation.parallel import ordered_map
from simulation.render import (
    STAR_COLORS,
    StarDrawer,
    draw_galaxy,
    draw_profile,
    lupton_parameters,
    seeing_psf,
    to_uint8,
)

# An object is marked difficult (below the detection limit) when its matched-filter S/N is
# under 10 or fewer than 15 of its pixels are 2 sky sigma above the sky: faint extended
# galaxies can have a high total S/N while no pixel stands out of the noise.
DIFFICULT_SNR = 10.0
DIFFICULT_FOOTPRINT = 15
FOOTPRINT_SIGMA = 2.0
VISIBLE_SIGMA = 1.0  # a box ends where the galaxy fades below the sky noise (see visible_box)
UNRESOLVED_HLR = 0.5  # galaxies with a half-light radius under this many PSF FWHMs are difficult
TRUTH_FIELDS = (
    "frame",
    "object_id",
    "kind",
    "class_name",
    "x",
    "y",
    "flux",
    "hlr",
    "snr",
    "footprint",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "flux_in_box",
    "difficult",
    "truncated",
    "psf_fwhm",
)


@dataclass(frozen=True)
class FrameSettings:
    width: int = 1280
    height: int = 720
    seed: int = 0
    scheme: str = "decals"
    labels: str = "galaxy"  # "galaxy", or "galaxy10" for the class name of each galaxy
    stars: bool = False  # also write `star` boxes
    image_format: str = "jpg"
    fits: bool = False
    min_galaxies: int = 8
    max_galaxies: int = 40
    look: str = "survey"  # "survey" (SDSS-like), or "cmos": an amateur colour CMOS camera (see CAMERA_LOOKS)


# How an amateur's colour CMOS rig differs from the survey look: coarser sampling (objects
# fewer pixels across), softer seeing, a green-heavy Bayer balance, more read noise, a
# brighter sky and a plain gamma stretch instead of the survey's asinh colour stretch.
CAMERA_LOOKS = {
    "survey": {"size_scale": 1.0, "psf_fwhm": (2.0, 4.5), "gains": (1.0, 1.0, 1.0), "noise": 0.0},
    "cmos": {"size_scale": 0.6, "psf_fwhm": (3.5, 6.0), "gains": (0.75, 1.2, 0.85), "noise": 6.0},
}


@dataclass
class TruthObject:
    frame: str
    object_id: int
    kind: str
    class_name: str
    x: float
    y: float
    flux: float
    hlr: float
    snr: float
    footprint: int  # pixels FOOTPRINT_SIGMA above the sky
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    flux_in_box: float
    difficult: bool
    truncated: bool
    psf_fwhm: float = 0.0


def light_box(x0: int, y0: int, mono: np.ndarray, fraction: float = 0.95) -> tuple[int, int, int, int]:
    """The box holding `fraction` of a stamp's light along each axis (so at least
    2 * fraction - 1 of it in all), in frame pixels: (xmin, ymin, xmax, ymax), max exclusive."""
    tail = (1 - fraction) / 2
    light = np.clip(mono, 0, None)
    total = light.sum()
    if total <= 0:
        return x0, y0, x0 + 1, y0 + 1

    def span(profile: np.ndarray) -> tuple[int, int]:
        cumulative = np.cumsum(profile) / total
        low = int(np.searchsorted(cumulative, tail, side="right"))
        high = int(np.searchsorted(cumulative, 1 - tail, side="left"))
        return low, high + 1

    xa, xb = span(light.sum(axis=0))
    ya, yb = span(light.sum(axis=1))
    return x0 + xa, y0 + ya, x0 + xb, y0 + yb


def visible_box(
    x0: int, y0: int, mono: np.ndarray, threshold: float, light: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """What an annotator would draw: the 95 %-light box cut down to the pixels where the
    noise-free galaxy stands `threshold` above the sky. A faint, large galaxy's 95 %-light box
    reaches far into the noise, where no one sees it; a bright one's isophote is wider than its
    light box. With no pixel above the threshold (an object nobody sees), the light box."""
    rows, columns = np.nonzero(mono > threshold)
    if len(rows) == 0:
        return light
    iso = (
        x0 + int(columns.min()),
        y0 + int(rows.min()),
        x0 + int(columns.max()) + 1,
        y0 + int(rows.max()) + 1,
    )
    box = (max(light[0], iso[0]), max(light[1], iso[1]), min(light[2], iso[2]), min(light[3], iso[3]))
    return box if box[2] > box[0] and box[3] > box[1] else light


def _clip_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    return max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)


def _fraction_inside(
    x0: int, y0: int, mono: np.ndarray, box: tuple[int, int, int, int], total: float
) -> float:
    x1, y1, x2, y2 = box
    inside = np.clip(
        mono[max(y1 - y0, 0) : max(y2 - y0, 0), max(x1 - x0, 0) : max(x2 - x0, 0)], 0, None
    ).sum()
    return float(inside / total) if total > 0 else 0.0


def _snr(mono: np.ndarray, sigma: float) -> float:
    """Matched-filter signal-to-noise of a noise-free stamp on white noise of `sigma`."""
    return float(np.sqrt(np.sum(mono.astype(np.float64) ** 2)) / sigma)


def _galaxy_size(rng: np.random.Generator, width: int, height: int) -> float:
    """Half-light radius in pixels: mostly small and faint, some large, a few filling the frame."""
    if rng.random() < 0.75:
        return float(np.exp(rng.uniform(np.log(1.0), np.log(10.0))))
    return float(np.exp(rng.uniform(np.log(10.0), np.log(min(width, height) / 6))))


def render_frame(settings: FrameSettings, index: int) -> tuple[np.ndarray, np.ndarray, list[TruthObject]]:
    """(8-bit RGB frame, linear float32 frame, truth) for frame `index` of a run."""
    rng = np.random.default_rng([settings.seed, index, 0xF4A3E])
    width, height = settings.width, settings.height
    name = f"frame_{index:05d}"
    scheme = get_scheme(settings.scheme)
    linear = np.zeros((height, width, 3), np.float32)
    if settings.look not in CAMERA_LOOKS:
        raise ValueError(f"unknown camera look {settings.look!r}: one of {', '.join(CAMERA_LOOKS)}")
    look = CAMERA_LOOKS[settings.look]
    psf_fwhm = rng.uniform(*look["psf_fwhm"])
    psf = seeing_psf(psf_fwhm)
    sky_sigma = 1.0
    truths: list[TruthObject] = []

    # Galaxies: class drawn with the scheme's real proportions, surface brightness from
    # far below the sky noise (undetectable, marked difficult) to very bright.
    n_galaxies = int(rng.integers(settings.min_galaxies, settings.max_galaxies + 1))
    for _ in range(n_galaxies):
        label = int(rng.choice(scheme.num_classes, p=scheme.proportions))
        class_name = scheme.names[label]
        hlr = _galaxy_size(rng, width, height) * look["size_scale"]
        x, y = rng.uniform(-0.05 * width, 1.05 * width), rng.uniform(-0.05 * height, 1.05 * height)
        galaxy = make_galaxy(settings.scheme, class_name, rng, hlr)
        mean_sb = sky_sigma * float(np.exp(rng.uniform(np.log(0.3), np.log(60.0))))
        flux = mean_sb * 2 * np.pi * hlr**2
        size = int(min(16 * hlr + 16, 2 * max(width, height)))
        x0, y0, mono = draw_galaxy(linear, galaxy, psf, x, y, flux, stamp_size=size)
        truths.append(
            _truth(
                name,
                len(truths),
                "galaxy",
                class_name,
                x,
                y,
                flux,
                hlr,
                x0,
                y0,
                mono,
                sky_sigma,
                width,
                height,
            )
        )

    # Stars: a steep number-flux relation (many faint, few bright), a few saturating.
    full_well = sky_sigma * float(np.exp(rng.uniform(np.log(3000), np.log(20000))))
    n_stars = int(rng.integers(30, 300))
    fluxes = sky_sigma * 40 * (1 - rng.random(n_stars)) ** (-1 / 0.7)
    spike_angle = rng.uniform(0, np.pi / 2)
    stars = StarDrawer(psf)
    for flux in fluxes:
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        color = STAR_COLORS[int(rng.integers(0, len(STAR_COLORS)))]
        size = 24 if flux < full_well else 32 * int(min(1 + np.sqrt(flux / full_well), 6))
        x0, y0, mono = stars.draw(linear, x, y, float(flux), color, size=size)
        if flux > 2 * full_well:
            _diffraction_spikes(linear, x, y, float(flux), color, spike_angle, rng)
        truths.append(
            _truth(
                name,
                len(truths),
                "star",
                "star",
                x,
                y,
                float(flux),
                0.0,
                x0,
                y0,
                mono,
                sky_sigma,
                width,
                height,
            )
        )

    for obj in truths:
        obj.psf_fwhm = psf_fwhm
    _sky(linear, rng, sky_sigma)
    linear += rng.normal(0, sky_sigma, linear.shape).astype(np.float32)
    _bleed(linear, full_well)
    _hot_pixels_and_cosmic_rays(linear, rng, full_well)
    np.clip(linear, None, full_well, out=linear)

    sky_level = float(np.median(linear[::8, ::8].mean(axis=2)))
    stretch, q = lupton_parameters(
        sky_sigma * rng.uniform(300, 3000), sky_sigma, rng.uniform(200, 250), rng.uniform(2.0, 6.0)
    )
    if settings.look == "survey":
        image = to_uint8(linear - sky_level * rng.uniform(0.6, 0.95), stretch=stretch, q=q)
    else:
        scaled = (linear - sky_level * 0.8) * np.asarray(look["gains"], np.float32) / (sky_sigma * 120)
        gamma = np.clip(scaled, 0, 1) ** (1 / 2.2) * 255
        gamma += rng.normal(0, look["noise"], gamma.shape)
        image = np.clip(gamma, 0, 255).astype(np.uint8)
    return image, linear, truths


def _truth(
    frame: str,
    object_id: int,
    kind: str,
    class_name: str,
    x: float,
    y: float,
    flux: float,
    hlr: float,
    x0: int,
    y0: int,
    mono: np.ndarray,
    sky_sigma: float,
    width: int,
    height: int,
) -> TruthObject:
    total = float(np.clip(mono, 0, None).sum())
    threshold = FOOTPRINT_SIGMA * sky_sigma / np.sqrt(3)
    full_box = visible_box(x0, y0, mono, VISIBLE_SIGMA * sky_sigma / np.sqrt(3), light_box(x0, y0, mono))
    box = _clip_box(full_box, width, height)
    inside_frame = _fraction_inside(x0, y0, mono, (0, 0, width, height), total)
    return TruthObject(
        frame=frame,
        object_id=object_id,
        kind=kind,
        class_name=class_name,
        x=x,
        y=y,
        flux=flux,
        hlr=hlr,
        snr=_snr(mono, sky_sigma / np.sqrt(3)),
        footprint=int((mono > threshold).sum()),
        xmin=box[0],
        ymin=box[1],
        xmax=box[2],
        ymax=box[3],
        flux_in_box=_fraction_inside(x0, y0, mono, box, total),
        difficult=False,
        truncated=box != full_box or inside_frame < 0.999,
    )


def _diffraction_spikes(
    linear: np.ndarray,
    x: float,
    y: float,
    flux: float,
    color: np.ndarray,
    angle: float,
    rng: np.random.Generator,
) -> None:
    """Four spikes from a telescope's spider vanes: two thin sheared Gaussians through the star."""
    length = min(8 + 2.5 * np.sqrt(flux) / 30, 400)
    size = int(2 * length * 1.2) + 8
    for turn in (0.0, np.pi / 2):
        spike = galsim.Gaussian(sigma=length / 2.5, flux=flux * rng.uniform(0.01, 0.03), gsparams=GSPARAMS)
        spike = spike.shear(q=0.015, beta=(angle + turn) * galsim.radians)
        draw_profile(linear, spike, x, y, color, size, method="no_pixel")


def _sky(linear: np.ndarray, rng: np.random.Generator, sky_sigma: float) -> None:
    """Sky level with a linear gradient (moonlight, light pollution) and vignetting, per channel."""
    height, width = linear.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    level = sky_sigma * rng.uniform(5, 40)
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    plane = 1 + gx * (xx / width - 0.5) + gy * (yy / height - 0.5)
    radius2 = ((xx - width / 2) ** 2 + (yy - height / 2) ** 2) / (width**2 + height**2) * 4
    vignette = 1 - rng.uniform(0, 0.3) * radius2
    tint = np.array([1.0, rng.uniform(0.8, 1.05), rng.uniform(0.6, 1.0)], np.float32)
    linear += (level * plane * vignette)[..., None] * tint


def _bleed(linear: np.ndarray, full_well: float) -> None:
    """Charge from saturated pixels spills along CCD columns, up and down in equal parts."""
    over = np.clip(linear.mean(axis=2) - full_well, 0, None)
    columns = np.flatnonzero(over.max(axis=0) > 0)
    for column in columns:
        rows = np.flatnonzero(over[:, column] > 0)
        excess = over[rows, column].sum()
        length = int(min(excess / full_well, linear.shape[0] // 3))
        if length <= 0:
            continue
        top, bottom = max(rows.min() - length // 2, 0), min(rows.max() + length // 2 + 1, linear.shape[0])
        linear[top:bottom, column] = full_well


def _hot_pixels_and_cosmic_rays(linear: np.ndarray, rng: np.random.Generator, full_well: float) -> None:
    height, width = linear.shape[:2]
    n_hot = int(rng.integers(5, 40))
    ys, xs = rng.integers(0, height, n_hot), rng.integers(0, width, n_hot)
    linear[ys, xs] += (full_well * rng.uniform(0.1, 1.0, n_hot))[:, None]
    for _ in range(int(rng.integers(0, 12))):
        length = rng.uniform(2, 25)
        angle = rng.uniform(0, np.pi)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        steps = np.linspace(0, length, int(length * 2) + 2)
        cx = np.clip((x + steps * np.cos(angle)).astype(int), 0, width - 1)
        cy = np.clip((y + steps * np.sin(angle)).astype(int), 0, height - 1)
        linear[cy, cx] += full_well * rng.uniform(0.2, 1.0)


def _annotation(settings: FrameSettings, image_name: str, truths: list[TruthObject]) -> ImageAnnotation:
    boxes = []
    for obj in truths:
        if obj.kind == "star" and not settings.stars:
            continue
        if obj.xmax - obj.xmin < 1 or obj.ymax - obj.ymin < 1 or obj.flux_in_box <= 0:
            continue
        if obj.kind == "galaxy":
            label = obj.class_name if settings.labels == "galaxy10" else "galaxy"
        else:
            label = "star"
        boxes.append(
            Box(
                label,
                obj.xmin,
                obj.ymin,
                obj.xmax,
                obj.ymax,
                difficult=obj.difficult,
                truncated=obj.truncated,
            )
        )
    return ImageAnnotation(image_name, settings.width, settings.height, 3, boxes, folder="frames")


def _mark_difficult(truths: list[TruthObject]) -> None:
    for obj in truths:
        # Light cut off by the frame edge counts against detectability too.
        faint = obj.snr < DIFFICULT_SNR or obj.footprint < DIFFICULT_FOOTPRINT or obj.flux_in_box < 0.3
        # A galaxy much smaller than the seeing looks like a star: no one can call it a galaxy.
        unresolved = obj.kind == "galaxy" and obj.hlr < UNRESOLVED_HLR * obj.psf_fwhm
        obj.difficult = faint or unresolved


def write_frame(settings: FrameSettings, index: int, out: Path) -> list[TruthObject]:
    """Render frame `index` and write its image, labelImg XML and (optionally) FITS into out."""
    from PIL import Image

    image, linear, truths = render_frame(settings, index)
    _mark_difficult(truths)
    name = f"frame_{index:05d}"
    image_name = f"{name}.{settings.image_format}"
    params = {"quality": 92} if settings.image_format == "jpg" else {}
    Image.fromarray(image).save(out / image_name, **params)
    write_voc(_annotation(settings, image_name, truths), out / f"{name}.xml")
    if settings.fits:
        from astropy.io import fits

        hdu = fits.PrimaryHDU(np.moveaxis(linear, 2, 0).astype(np.float32))
        hdu.header["BUNIT"] = ("sky sigma", "linear units: one sky-noise sigma")
        hdu.header["CHANNELS"] = ("i,r,g", "planes 0..2")
        fits.HDUList([hdu]).writeto(out / f"{name}.fits", overwrite=True)
    return truths


def _write_chunk(args: tuple[FrameSettings, list[int], str]) -> list[TruthObject]:
    settings, indices, out = args
    truths: list[TruthObject] = []
    for index in indices:
        truths += write_frame(settings, index, Path(out))
    return truths


def simulate_frames(
    n: int,
    settings: FrameSettings,
    out: Path | str,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write n frames with labelImg XML into out, and truth.csv for all of them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(settings, [i], str(out)) for i in range(n)]
    truths: list[TruthObject] = []
    for done in ordered_map(_write_chunk, jobs, workers):
        truths += done
        if progress:
            progress(1)
    truth_path = out / "truth.csv"
    with truth_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRUTH_FIELDS)
        writer.writeheader()
        for obj in truths:
            row = asdict(obj)
            writer.writerow(
                {
                    k: (f"{v:.4f}" if isinstance(v, float) else int(v) if isinstance(v, bool) else v)
                    for k, v in row.items()
                }
            )
    return truth_path
