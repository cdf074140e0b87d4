"""Drawing galaxies and stars with GalSim into linear RGB arrays, and the 8-bit stretch.

Every component is convolved with the PSF and integrated over pixels by GalSim, drawn once
in monochrome and added to the three channels with its colour. Camera-like 8-bit output
uses the Lupton et al. (2004) asinh colour stretch from astropy, as SDSS and Legacy
Survey colour images do.
"""

from __future__ import annotations

import cv2
import galsim
import numpy as np
from astropy.visualization import LuptonAsinhStretch, ManualInterval, make_lupton_rgb

from simulation.morphology import GSPARAMS, Galaxy

STAR_COLORS = (
    np.array([1.0, 0.95, 0.9]),  # white-yellow
    np.array([1.0, 0.8, 0.55]),  # orange
    np.array([0.85, 0.9, 1.1]),  # blue-white
)


def seeing_psf(fwhm: float) -> galsim.GSObject:
    """Atmospheric seeing: a Kolmogorov profile (analytic in Fourier space, so cheap to convolve)."""
    return galsim.Kolmogorov(fwhm=fwhm, gsparams=GSPARAMS)


def draw_galaxy(
    target: np.ndarray,
    galaxy: Galaxy,
    psf: galsim.GSObject,
    x: float,
    y: float,
    flux: float,
    stamp_size: int | None = None,
) -> tuple[int, int, np.ndarray]:
    """Add a galaxy centred at pixel (x, y) into target (H, W, 3); returns (x0, y0, mono stamp),
    the noise-free monochrome stamp and its corner, for exact labels."""
    height, width = target.shape[:2]
    hlr = galaxy.truth.get("hlr", 4.0)
    size = stamp_size or int(min(max(16, 12 * hlr + 8), 2 * max(width, height)))
    # Galaxies much larger than the PSF are drawn on a coarser grid and interpolated up:
    # the FFTs shrink by coarse**2 and nothing visible is lost.
    coarse = max(1, int(hlr // 10))
    size = int(np.ceil(size / (2 * coarse))) * 2 * coarse
    x0, y0 = int(np.floor(x)) - size // 2, int(np.floor(y)) - size // 2
    offset = ((x - np.floor(x) - 0.5) / coarse, (y - np.floor(y) - 0.5) / coarse)
    grid = size // coarse
    color_stamp = np.zeros((grid, grid, 3), np.float32)
    mono = np.zeros((grid, grid), np.float32)
    for component in galaxy.components:
        drawn = (
            galsim.Convolve(component.profile * flux, psf, gsparams=GSPARAMS)
            .drawImage(nx=grid, ny=grid, scale=float(coarse), offset=offset)
            .array
        )
        color_stamp += drawn[..., None] * component.color[None, None, :].astype(np.float32)
        mono += drawn * float(component.color.mean())
    if coarse > 1:
        color_stamp = cv2.resize(color_stamp, (size, size), interpolation=cv2.INTER_LINEAR) / coarse**2
        mono = cv2.resize(mono, (size, size), interpolation=cv2.INTER_LINEAR) / coarse**2
    add_stamp(target, color_stamp, x0, y0)
    return x0, y0, mono


def draw_profile(
    target: np.ndarray,
    profile: galsim.GSObject,
    x: float,
    y: float,
    color: np.ndarray,
    size: int,
    method: str = "auto",
) -> tuple[int, int, np.ndarray]:
    """Add a profile centred at (x, y) into target with a colour; returns (x0, y0, mono stamp)."""
    x0, y0 = int(np.floor(x)) - size // 2, int(np.floor(y)) - size // 2
    offset = (x - np.floor(x) - 0.5, y - np.floor(y) - 0.5)
    drawn = profile.drawImage(nx=size, ny=size, scale=1.0, offset=offset, method=method).array
    add_stamp(target, drawn[..., None] * color[None, None, :].astype(np.float32), x0, y0)
    return x0, y0, drawn * float(color.mean())


class StarDrawer:
    """Draws point sources with one PSF: the PSF is drawn once per stamp size and
    quarter-pixel phase, then scaled by each star's flux (hundreds of stars per frame)."""

    PHASES = 4

    def __init__(self, psf: galsim.GSObject) -> None:
        self.psf = psf
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def draw(
        self, target: np.ndarray, x: float, y: float, flux: float, color: np.ndarray, size: int = 24
    ) -> tuple[int, int, np.ndarray]:
        fx = int((x - np.floor(x)) * self.PHASES) % self.PHASES
        fy = int((y - np.floor(y)) * self.PHASES) % self.PHASES
        key = (size, fx, fy)
        if key not in self._cache:
            offset = ((fx + 0.5) / self.PHASES - 0.5, (fy + 0.5) / self.PHASES - 0.5)
            self._cache[key] = self.psf.drawImage(nx=size, ny=size, scale=1.0, offset=offset).array
        x0, y0 = int(np.floor(x)) - size // 2, int(np.floor(y)) - size // 2
        drawn = self._cache[key] * np.float32(flux)
        add_stamp(target, drawn[..., None] * color[None, None, :].astype(np.float32), x0, y0)
        return x0, y0, drawn * float(color.mean())


def draw_star(
    target: np.ndarray,
    psf: galsim.GSObject,
    x: float,
    y: float,
    flux: float,
    color: np.ndarray,
    size: int = 24,
) -> tuple[int, int, np.ndarray]:
    return draw_profile(target, psf * flux, x, y, color, size)


def add_stamp(target: np.ndarray, stamp: np.ndarray, x0: int, y0: int) -> None:
    """Add a stamp whose top-left pixel is (x0, y0), clipped to the target."""
    height, width = target.shape[:2]
    sy, sx = stamp.shape[:2]
    tx0, ty0 = max(x0, 0), max(y0, 0)
    tx1, ty1 = min(x0 + sx, width), min(y0 + sy, height)
    if tx1 <= tx0 or ty1 <= ty0:
        return
    target[ty0:ty1, tx0:tx1] += stamp[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]


def lupton_parameters(
    peak: float, noise_sigma: float, peak_out: float, noise_out: float
) -> tuple[float, float]:
    """(stretch, Q) of astropy's Lupton asinh stretch that map a luminance of `peak` to
    `peak_out` and sky noise of `noise_sigma` to `noise_out` (both in 8-bit counts).

    Lupton's luminance mapping is out = A asinh(u I) with A = 25.5 / asinh(0.1 Q) and
    u = Q / stretch; the noise fixes A u, and the peak then fixes u (by bisection).
    """
    peak = max(peak, 3 * noise_sigma)
    ratio = peak_out / noise_out

    def excess(u: float) -> float:  # decreasing in u
        return np.arcsinh(u * peak) / (u * noise_sigma) - ratio

    lo, hi = 1e-6 / peak, 1e6 / peak
    if excess(lo) < 0:  # a linear stretch is already too compressive
        u = lo
    else:
        for _ in range(60):
            mid = np.sqrt(lo * hi)
            lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
        u = np.sqrt(lo * hi)
    amplitude = noise_out / (u * noise_sigma)
    q = 10 * np.sinh(min(25.5 / amplitude, 50.0))
    return float(q / u), float(q)


def to_uint8(linear_rgb: np.ndarray, stretch: float, q: float = 8.0) -> np.ndarray:
    """Lupton asinh colour stretch of a linear (H, W, 3) image, black at zero."""
    return make_lupton_rgb(
        linear_rgb[..., 0],
        linear_rgb[..., 1],
        linear_rgb[..., 2],
        interval=ManualInterval(vmin=0),
        stretch_object=LuptonAsinhStretch(stretch=stretch, Q=q),
    )
