"""Galaxy morphologies as GalSim profiles, one recipe per Galaxy10 class.

Each recipe builds the components that define its class (Sérsic spheroids, exponential
and inclined disks, bars, boxy bulges, spiral arms, star-forming knots, tidal features)
with wide random ranges, and gives each component a colour (linear flux in the R, G, B
channels, standing for SDSS i, r, g). Sizes are in pixels of the stamp being drawn.

GalSim has no spiral-arm or tidal-arc profile, so those patterns are computed on a fine
grid with numpy and handed to GalSim as an InterpolatedImage; GalSim then does what it is
for: shearing, rotation, PSF convolution and pixel integration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import galsim
import numpy as np

# Coarser than GalSim's defaults (which target weak-lensing precision): 8-bit stamps
# cannot show the difference, and drawing is 3-5 times faster.
GSPARAMS = galsim.GSParams(folding_threshold=2e-2, maxk_threshold=3e-3, kvalue_accuracy=1e-4)

# Linear flux ratios in (R, G, B) = (i, r, g): old stellar populations are red, star
# formation is blue. Each is jittered per galaxy.
RED = np.array([1.0, 0.78, 0.5])
YELLOW = np.array([1.0, 0.85, 0.62])
DISK = np.array([1.0, 0.9, 0.8])
BLUE = np.array([0.75, 0.85, 1.15])


@dataclass
class Component:
    profile: galsim.GSObject
    color: np.ndarray  # (3,) linear RGB weights


@dataclass
class Galaxy:
    """A galaxy's components (total flux 1 before colour) and the truth that defines its class."""

    components: list[Component]
    truth: dict = field(default_factory=dict)

    def transformed(self, angle: float, dx: float = 0.0, dy: float = 0.0, flux: float = 1.0) -> Galaxy:
        rotation = angle * galsim.radians
        return Galaxy(
            [Component(c.profile.rotate(rotation).shift(dx, dy) * flux, c.color) for c in self.components],
            dict(self.truth),
        )


def _color(rng: np.random.Generator, base: np.ndarray, jitter: float = 0.08) -> np.ndarray:
    return base * rng.uniform(1 - jitter, 1 + jitter, 3)


def _sersic(n: float, hlr: float, flux: float) -> galsim.GSObject:
    # n is rounded so GalSim's per-index Hankel tables are reused; trunc keeps FFTs small.
    n = float(np.clip(round(n, 1), 0.5, 6.0))
    trunc = 8 * hlr if n >= 2 else 0.0  # low-n profiles have no wings to cut
    return galsim.Sersic(n=n, half_light_radius=hlr, flux=flux, trunc=trunc, gsparams=GSPARAMS)


def _sheared(profile: galsim.GSObject, q: float) -> galsim.GSObject:
    return profile.shear(q=float(np.clip(q, 0.05, 1.0)), beta=0 * galsim.degrees)


def _grid(extent: float, n: int = 96) -> tuple[np.ndarray, np.ndarray, float]:
    scale = 2 * extent / n
    axis = (np.arange(n) - (n - 1) / 2) * scale
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return xx, yy, scale


def _interpolated(pattern: np.ndarray, scale: float, flux: float) -> galsim.GSObject:
    pattern = np.clip(pattern, 0, None)
    total = pattern.sum()
    if total <= 0:
        raise ValueError("empty pattern")
    image = galsim.Image(np.ascontiguousarray(pattern / total * flux), scale=scale)
    return galsim.InterpolatedImage(image, flux=flux, gsparams=GSPARAMS, x_interpolant="linear")


def spiral_arms(
    rng: np.random.Generator,
    scale_radius: float,
    arms: int,
    pitch_deg: float,
    flux: float,
    inner_radius: float,
    start_angle: float = 0.0,
    knots: int = 0,
) -> galsim.GSObject:
    """Logarithmic spiral arms on an exponential envelope, with star-forming knots on the ridges.

    Arm phase: m * (phi - s ln(r / r_in) / tan(pitch)) - m * start, s = +1 or -1 (the winding
    sense); arms start at r_in.
    """
    extent = 5.0 * scale_radius
    xx, yy, scale = _grid(extent)
    radius = np.hypot(xx, yy) + 1e-6
    phi = np.arctan2(yy, xx)
    # Trailing arms wind either way as seen from Earth (S- or Z-shaped): the sense is random.
    chirality = 1.0 if rng.random() < 0.5 else -1.0
    winding = (
        chirality
        * np.log(np.maximum(radius, inner_radius * 0.5) / inner_radius)
        / np.tan(np.radians(pitch_deg))
    )
    phase = arms * (phi - winding - start_angle)
    sharpness = rng.uniform(1.0, 3.5)
    ridge = ((1 + np.cos(phase)) / 2) ** sharpness
    envelope = np.exp(-radius / scale_radius) * (1 - np.exp(-((radius / inner_radius) ** 3)))
    pattern = ridge * envelope
    if knots:
        # Knots sit on the ridges (phase = 0 mod 2pi) at radii drawn from the envelope.
        knot_radius = inner_radius + rng.gamma(2.0, scale_radius * 0.6, knots)
        arm_index = rng.integers(0, arms, knots)
        knot_phi = (
            start_angle
            + 2 * np.pi * arm_index / arms
            + chirality * np.log(knot_radius / inner_radius) / np.tan(np.radians(pitch_deg))
        )
        knot_sigma = rng.uniform(0.3, 0.8, knots) * max(scale, 0.4)
        knot_flux = rng.exponential(1.0, knots)
        peak = pattern.max()
        for r, p, s, f in zip(knot_radius, knot_phi, knot_sigma, knot_flux, strict=True):
            kx, ky = r * np.cos(p), r * np.sin(p)
            pattern += 0.3 * peak * f * np.exp(-((xx - kx) ** 2 + (yy - ky) ** 2) / (2 * s * s))
    return _interpolated(pattern, scale, flux)


def tidal_tail(rng: np.random.Generator, length: float, width: float, flux: float) -> galsim.GSObject:
    """A curved, fading arc of light leaving a galaxy (a tidal tail)."""
    extent = length * 1.2
    xx, yy, scale = _grid(extent)
    curvature = rng.uniform(0.5, 1.5) / length
    t = np.linspace(0, 1, 64)
    path_x = t * length
    path_y = curvature * path_x**2 * rng.choice([-1, 1])
    pattern = np.zeros_like(xx)
    for px, py, tt in zip(path_x, path_y, t, strict=True):
        pattern += np.exp(-tt * 2.5) * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * width**2))
    return _interpolated(pattern, scale, flux)


# ---- class recipes ---------------------------------------------------------------


def smooth(
    rng: np.random.Generator, hlr: float, q_range: tuple[float, float], n_range: tuple[float, float]
) -> Galaxy:
    q = rng.uniform(*q_range)
    n = rng.uniform(*n_range)
    profile = _sheared(_sersic(n, hlr, 1.0), q)
    return Galaxy([Component(profile, _color(rng, RED if rng.random() < 0.8 else YELLOW))], {"q": q, "n": n})


def edge_on(rng: np.random.Generator, hlr: float, bulge: str) -> Galaxy:
    """An inclined thick exponential disk, with no bulge, a rounded one or a boxy/peanut one."""
    inclination = rng.uniform(82, 90)
    scale_radius = hlr / 1.678
    height_ratio = rng.uniform(0.07, 0.18) if bulge == "none" else rng.uniform(0.1, 0.22)
    bulge_fraction = {
        "none": rng.uniform(0.0, 0.04),
        "rounded": rng.uniform(0.25, 0.6),
        "boxy": rng.uniform(0.25, 0.5),
    }[bulge]
    disk = galsim.InclinedExponential(
        inclination * galsim.degrees,
        scale_radius=scale_radius,
        scale_height=height_ratio * scale_radius,
        flux=1 - bulge_fraction,
        gsparams=GSPARAMS,
    )
    components = [Component(disk, _color(rng, DISK if rng.random() < 0.6 else BLUE))]
    bulge_hlr = hlr * rng.uniform(0.25, 0.45)
    if bulge == "rounded":
        profile = _sheared(_sersic(rng.uniform(2, 4), bulge_hlr, bulge_fraction), rng.uniform(0.65, 0.95))
        components.append(Component(profile, _color(rng, RED)))
    elif bulge == "boxy":
        # Two crossed elongated spheroids make the box / peanut (X) shape of a bar seen edge-on.
        tilt = rng.uniform(18, 32)
        for sign in (-1, 1):
            lobe = _sheared(
                _sersic(rng.uniform(0.8, 1.2), bulge_hlr * 1.2, bulge_fraction / 2), rng.uniform(0.35, 0.5)
            )
            components.append(Component(lobe.rotate(sign * tilt * galsim.degrees), _color(rng, RED)))
    elif bulge_fraction > 0.005:
        components.append(Component(_sersic(2.0, bulge_hlr * 0.6, bulge_fraction), _color(rng, YELLOW)))
    return Galaxy(components, {"inclination": inclination, "bulge_fraction": bulge_fraction, "bulge": bulge})


def face_on_disk(rng: np.random.Generator, hlr: float) -> Galaxy:
    """A disk seen near face-on with a bulge and no spiral structure (SDSS class 0)."""
    q = rng.uniform(0.6, 1.0)
    bulge_fraction = rng.uniform(0.1, 0.45)
    disk = _sheared(galsim.Exponential(half_light_radius=hlr, flux=1 - bulge_fraction, gsparams=GSPARAMS), q)
    bulge = _sheared(
        _sersic(rng.uniform(2, 4), hlr * rng.uniform(0.15, 0.3), bulge_fraction), min(1, q + 0.15)
    )
    return Galaxy(
        [Component(disk, _color(rng, DISK)), Component(bulge, _color(rng, RED))],
        {"q": q, "bulge_fraction": bulge_fraction},
    )


ARM_COUNT_WEIGHTS = np.array([0.05, 0.55, 0.2, 0.12, 0.05, 0.03])  # 1 to 6 arms


def spiral(rng: np.random.Generator, hlr: float, pitch_range: tuple[float, float], barred: bool) -> Galaxy:
    """Disk + bulge + logarithmic arms with knots; barred ones have a bar whose ends start the arms."""
    q = rng.uniform(0.45, 1.0)
    pitch = rng.uniform(*pitch_range)
    arms = int(rng.choice(np.arange(1, 7), p=ARM_COUNT_WEIGHTS))
    if barred:
        arms = int(rng.choice([2, 2, 2, 3, 4]))
    scale_radius = hlr / 1.678
    bulge_fraction = rng.uniform(0.05, 0.35)
    arm_fraction = rng.uniform(0.1, 0.45) * (1 - bulge_fraction)
    bar_fraction = rng.uniform(0.12, 0.25) if barred else 0.0
    disk_fraction = 1 - bulge_fraction - arm_fraction - bar_fraction
    start = rng.uniform(0, 2 * np.pi)
    components = [
        Component(
            galsim.Exponential(scale_radius=scale_radius, flux=disk_fraction, gsparams=GSPARAMS),
            _color(rng, DISK),
        ),
        Component(
            _sersic(rng.uniform(1.5, 4), hlr * rng.uniform(0.12, 0.3), bulge_fraction), _color(rng, YELLOW)
        ),
    ]
    inner = hlr * rng.uniform(0.25, 0.45)
    truth = {"q": q, "pitch": pitch, "arms": arms, "barred": barred}
    if barred:
        bar_length = hlr * rng.uniform(0.6, 1.1)  # half length
        bar = _sheared(
            _sersic(rng.uniform(0.5, 1.0), bar_length * 0.55, bar_fraction), rng.uniform(0.18, 0.32)
        )
        components.append(Component(bar.rotate(start * galsim.radians), _color(rng, YELLOW)))
        inner = bar_length
        truth["bar_length"] = bar_length
    arm_profile = spiral_arms(
        rng,
        scale_radius * rng.uniform(1.0, 1.3),
        arms,
        pitch,
        arm_fraction,
        inner,
        start,
        knots=int(rng.integers(5, 30)),
    )
    components.append(Component(arm_profile, _color(rng, BLUE, 0.12)))
    # Inclination: the whole disk is squashed along one axis; the caller rotates it.
    return Galaxy([Component(_sheared(c.profile, q), c.color) for c in components], truth)


def disturbed(rng: np.random.Generator, hlr: float) -> Galaxy:
    """Asymmetric, clumpy, lopsided light: an off-centre disk, a plume and scattered knots."""
    main = _sheared(_sersic(rng.uniform(0.8, 2.5), hlr * rng.uniform(0.6, 1.0), 0.45), rng.uniform(0.4, 1.0))
    offset = hlr * rng.uniform(0.3, 0.8)
    angle = rng.uniform(0, 2 * np.pi)
    plume = _sheared(
        galsim.Exponential(half_light_radius=hlr * rng.uniform(0.8, 1.5), flux=0.3, gsparams=GSPARAMS),
        rng.uniform(0.25, 0.6),
    ).rotate(rng.uniform(0, np.pi) * galsim.radians)
    knots = galsim.Convolve(
        galsim.RandomKnots(
            int(rng.integers(8, 30)),
            half_light_radius=hlr * rng.uniform(0.8, 1.4),
            flux=0.08,
            rng=galsim.BaseDeviate(int(rng.integers(1, 2**31))),
            gsparams=GSPARAMS,
        ),
        galsim.Gaussian(sigma=hlr * rng.uniform(0.08, 0.18), gsparams=GSPARAMS),  # HII regions are resolved
    )
    components = [
        Component(main, _color(rng, YELLOW)),
        Component(plume.shift(offset * np.cos(angle), offset * np.sin(angle)), _color(rng, DISK)),
        Component(
            knots.shift(-0.5 * offset * np.cos(angle), -0.5 * offset * np.sin(angle)), _color(rng, BLUE, 0.15)
        ),
    ]
    return Galaxy(components, {"offset": offset})


def merging(rng: np.random.Generator, hlr: float) -> Galaxy:
    """Two or three galaxies overlapping or close, with tidal tails."""
    count = 2 if rng.random() < 0.8 else 3
    components: list[Component] = []
    angle = rng.uniform(0, 2 * np.pi)
    separation = hlr * rng.uniform(0.9, 2.2)
    centres = []
    for i in range(count):
        part_hlr = hlr * rng.uniform(0.45, 0.8)
        # Each partner is a spheroid or a disk galaxy.
        part = (
            smooth(rng, part_hlr, (0.5, 1.0), (1.5, 4.0))
            if rng.random() < 0.5
            else face_on_disk(rng, part_hlr)
        )
        flux = rng.uniform(0.35, 1.0) if i else 1.0
        r = 0.0 if i == 0 else separation * rng.uniform(0.8, 1.2)
        a = angle + (i - 1) * rng.uniform(1.5, 2.5)
        dx, dy = r * np.cos(a), r * np.sin(a)
        centres.append((dx, dy))
        components += part.transformed(rng.uniform(0, 2 * np.pi), dx, dy, flux).components
    total = sum(c.profile.flux for c in components)
    for _ in range(int(rng.integers(1, 3))):
        tail = tidal_tail(
            rng, hlr * rng.uniform(1.5, 3.0), hlr * rng.uniform(0.12, 0.25), total * rng.uniform(0.06, 0.15)
        )
        cx, cy = centres[int(rng.integers(0, count))]
        components.append(
            Component(
                tail.rotate(rng.uniform(0, 2 * np.pi) * galsim.radians).shift(cx, cy), _color(rng, DISK)
            )
        )
    scale = 1.0 / sum(c.profile.flux for c in components)
    components = [Component(c.profile * scale, c.color) for c in components]
    # Centres relative to the light-weighted centre, so the stamp is centred on the system.
    return Galaxy(components, {"count": count, "centres": centres, "separation": separation})


Recipe = Callable[[np.random.Generator, float], Galaxy]

RECIPES: dict[str, dict[str, Recipe]] = {
    "decals": {
        "disturbed": disturbed,
        "merging": merging,
        "round_smooth": lambda rng, hlr: smooth(rng, hlr, (0.8, 1.0), (2.5, 5.5)),
        "in_between_round_smooth": lambda rng, hlr: smooth(rng, hlr, (0.5, 0.8), (1.5, 5.0)),
        "cigar_smooth": lambda rng, hlr: smooth(rng, hlr, (0.18, 0.45), (1.0, 4.0)),
        "barred_spiral": lambda rng, hlr: spiral(rng, hlr, (8, 35), barred=True),
        "unbarred_tight_spiral": lambda rng, hlr: spiral(rng, hlr, (5, 17), barred=False),
        "unbarred_loose_spiral": lambda rng, hlr: spiral(rng, hlr, (22, 40), barred=False),
        "edge_on_no_bulge": lambda rng, hlr: edge_on(rng, hlr, "none"),
        "edge_on_with_bulge": lambda rng, hlr: edge_on(rng, hlr, "rounded"),
    },
    "sdss": {
        "disk_face_on_no_spiral": face_on_disk,
        "smooth_round": lambda rng, hlr: smooth(rng, hlr, (0.8, 1.0), (2.5, 5.5)),
        "smooth_in_between": lambda rng, hlr: smooth(rng, hlr, (0.5, 0.8), (1.5, 5.0)),
        "smooth_cigar": lambda rng, hlr: smooth(rng, hlr, (0.18, 0.45), (1.0, 4.0)),
        "edge_on_rounded_bulge": lambda rng, hlr: edge_on(rng, hlr, "rounded"),
        "edge_on_boxy_bulge": lambda rng, hlr: edge_on(rng, hlr, "boxy"),
        "edge_on_no_bulge": lambda rng, hlr: edge_on(rng, hlr, "none"),
        "tight_spiral": lambda rng, hlr: spiral(rng, hlr, (5, 14), barred=rng.random() < 0.3),
        "medium_spiral": lambda rng, hlr: spiral(rng, hlr, (15, 24), barred=rng.random() < 0.3),
        "loose_spiral": lambda rng, hlr: spiral(rng, hlr, (26, 40), barred=rng.random() < 0.3),
    },
}


def make_galaxy(scheme: str, class_name: str, rng: np.random.Generator, hlr: float) -> Galaxy:
    """A galaxy of the given Galaxy10 class, randomly oriented, with total flux 1."""
    galaxy = RECIPES[scheme][class_name](rng, hlr)
    galaxy.truth.update({"class": class_name, "hlr": hlr})
    return galaxy.transformed(rng.uniform(0, 2 * np.pi))
