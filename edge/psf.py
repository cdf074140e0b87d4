"""The frame's seeing, measured from its stars, and what the verifier's score makes of it.

A source of 6 pixels is a star under 4-pixel seeing and a galaxy under 2-pixel seeing, and the verifier's
32-pixel patch seldom holds a star to compare with. So each frame's PSF width is measured from its
brightest unsaturated compact sources (the sky proposals' segmentation, edge.proposals), and a small
logistic model on the verifier's logit, the box's size, that width and (in newer cards) the candidate's
concentration over the frame's stars' re-scores the verified candidates, on frames like those it was
fitted on (docs/verifier.md, "The frame's seeing" and "Each candidate's concentration"). Written with
numpy: edge/ may not import photutils or sep, and their PSF tools fit models where a half-maximum area
and two aperture sums are all this needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Features of a verified candidate: the verifier's logit, log2 of the box's width and height over 16
# pixels (edge.models.candidate_priors), log2 of the frame's PSF FWHM over 4 pixels and, where the card
# measures it, the candidate's concentration (source_concentration) over the median of its frame's stars'
# (psf_stars), with their products and squares (a quadratic logistic model).
BASE_FEATURES = ("verifier_logit", "log2_width_over_16", "log2_height_over_16", "log2_psf_fwhm_over_4")


def feature_count(base: int) -> int:
    """Weights of a quadratic model of `base` terms: the terms, then each product of two, squares included."""
    return base + base * (base + 1) // 2


FEATURE_COUNT = feature_count(len(BASE_FEATURES))  # 14: cards without a concentration


@dataclass(frozen=True)
class PsfMeasurement:
    """How a frame's PSF width is measured from its stars (psf_stars)."""

    peak_sigma: float = 30.0  # a star measured peaks this far above the sky (filtered noise sigmas)
    quantile: float = 0.2  # of the half-maximum diameters: stars are the smallest sources
    min_stars: int = 5  # fewer measured: no PSF width, and the verifier's own score stands
    saturation: float = 0.95  # of the frame's brightest pixel: flat-topped sources are not measured


@dataclass(frozen=True)
class ConcentrationMeasurement:
    """How a candidate's concentration is measured (source_concentration): a star holds more of its
    light near its peak than a galaxy of the same box."""

    inner_radius: float = 1.5  # pixels from the peak
    outer_radius: float = 5.0


@dataclass(frozen=True)
class PsfCalibration:
    """A verifier card's `verification.psf_calibration`: how the PSF (and, when present, each
    candidate's concentration) is measured and the logistic model that re-scores candidates with it
    (fitted by `galaxy-edge export --psf-calibration`)."""

    intercept: float
    coefficients: tuple[float, ...]
    measurement: PsfMeasurement = PsfMeasurement()
    concentration: ConcentrationMeasurement | None = None  # None: the 14-weight model of older cards
    # The frames' stars' concentrations the model was fitted over: a frame outside (sharper or softer
    # than any fitted one, or without stars) keeps the verifier's own scores rather than extrapolate.
    star_concentration_range: tuple[float, float] = (-np.inf, np.inf)

    def applies(self, psf_fwhm: float, star_concentration: float) -> bool:
        """Whether a frame with this PSF width and stars' concentration is re-scored."""
        if not np.isfinite(psf_fwhm):
            return False
        if self.concentration is None:
            return True
        low, high = self.star_concentration_range
        return bool(np.isfinite(star_concentration) and low <= star_concentration <= high)

    @staticmethod
    def from_card(spec: dict) -> PsfCalibration:
        measurement = PsfMeasurement(**spec.get("measurement", {}))
        concentration = None
        if spec.get("concentration") is not None:
            concentration = ConcentrationMeasurement(**spec["concentration"])
            if not 0 < concentration.inner_radius < concentration.outer_radius <= 16:
                raise ValueError("psf_calibration.concentration needs 0 < inner_radius < outer_radius <= 16")
        coefficients = tuple(float(c) for c in spec.get("coefficients", ()))
        expected = feature_count(len(BASE_FEATURES) + (concentration is not None))
        if len(coefficients) != expected:
            raise ValueError(f"psf_calibration needs {expected} coefficients")
        if not 0 < measurement.quantile < 1 or measurement.peak_sigma <= 0 or measurement.min_stars < 1:
            raise ValueError("psf_calibration needs 0 < quantile < 1, peak_sigma > 0 and min_stars >= 1")
        if "intercept" not in spec:
            raise ValueError("psf_calibration needs an intercept")
        low, high = spec.get("star_concentration_range") or (-np.inf, np.inf)
        if concentration is not None and not low < high:
            raise ValueError("psf_calibration.star_concentration_range needs [low, high] with low < high")
        return PsfCalibration(
            float(spec["intercept"]), coefficients, measurement, concentration, (float(low), float(high))
        )

    def scores(
        self,
        logits: np.ndarray,
        priors: np.ndarray,
        psf_fwhm: float,
        concentration: np.ndarray | None = None,
    ) -> np.ndarray:
        """The re-scored probabilities of candidates with these verifier logits, priors (N, 3) and,
        when the card measures it, concentrations relative to the frame's stars' (N,)."""
        if (self.concentration is None) != (concentration is None):
            raise ValueError("the calibration's concentration term and the candidates' must come together")
        features = psf_features(logits, priors, psf_fwhm, concentration)
        z = features.astype(np.float64) @ np.asarray(self.coefficients) + self.intercept
        return (1 / (1 + np.exp(-z))).astype(np.float32)


def psf_features(
    logits: np.ndarray,
    priors: np.ndarray,
    psf_fwhm: float | np.ndarray,
    concentration: np.ndarray | None = None,
) -> np.ndarray:
    """(N, 14) the calibration's features: BASE_FEATURES, then the product of each pair of them, squares
    included, in row order (x0 x0, x0 x1, ..., x3 x3); (N, 20) with the candidate's concentration over
    its frame's stars' as a fifth term."""
    psf_term = np.log2(np.broadcast_to(np.asarray(psf_fwhm, np.float64), (len(logits),))) - 2
    columns = [np.asarray(logits, np.float64), *np.asarray(priors, np.float64)[:, 1:3].T, psf_term]
    if concentration is not None:
        columns.append(np.asarray(concentration, np.float64))
    base = np.column_stack(columns)
    upper = np.triu_indices(base.shape[1])
    return np.column_stack([base, base[:, upper[0]] * base[:, upper[1]]])


def source_concentration(
    residual: np.ndarray, filtered: np.ndarray, boxes: np.ndarray, measurement: ConcentrationMeasurement
) -> np.ndarray:
    """(N,) each box's source concentration: the sky-subtracted flux (residual, H x W) within
    inner_radius of its peak over that within outer_radius, clipped to [-1, 2] (a faint source's sums
    are noisy). The peak is filtered's (the matched-filtered residual) maximum over the box's central
    half, at least 3 x 3 pixels and at most 17 x 17; pixels outside the frame count as zero. A star
    measures about the same at every brightness under one seeing; a galaxy spreads wider."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = residual.shape
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_x = np.clip((boxes[:, 2] - boxes[:, 0]) / 4, 1.5, 8)
    half_y = np.clip((boxes[:, 3] - boxes[:, 1]) / 4, 1.5, 8)
    steps = np.arange(17)
    # The central half's pixel rows and columns, as many as fit in 17; the rest masked.
    rows = np.floor(centre_y - half_y)[:, None] + steps
    columns = np.floor(centre_x - half_x)[:, None] + steps
    row_ok = (rows <= np.floor(centre_y + half_y)[:, None]) & (rows >= 0) & (rows < height)
    column_ok = (columns <= np.floor(centre_x + half_x)[:, None]) & (columns >= 0) & (columns < width)
    rows_in, columns_in = np.clip(rows, 0, height - 1).astype(int), np.clip(columns, 0, width - 1).astype(int)
    window = filtered[rows_in[:, :, None], columns_in[:, None, :]]
    window = np.where(row_ok[:, :, None] & column_ok[:, None, :], window, -np.inf)
    peak = window.reshape(len(boxes), -1).argmax(axis=1)
    peak_y = rows_in[np.arange(len(boxes)), peak // 17]
    peak_x = columns_in[np.arange(len(boxes)), peak % 17]
    reach = int(np.floor(measurement.outer_radius))
    offsets = np.arange(-reach, reach + 1)
    distance = np.hypot(offsets[:, None], offsets[None, :])
    patch_rows, patch_columns = peak_y[:, None] + offsets, peak_x[:, None] + offsets
    inside = ((patch_rows >= 0) & (patch_rows < height))[:, :, None] & (
        (patch_columns >= 0) & (patch_columns < width)
    )[:, None, :]
    patches = residual[
        np.clip(patch_rows, 0, height - 1)[:, :, None], np.clip(patch_columns, 0, width - 1)[:, None, :]
    ]
    patches = np.where(inside, patches, 0).astype(np.float64)
    inner = (patches * (distance <= measurement.inner_radius)).sum(axis=(1, 2))
    outer = (patches * (distance <= measurement.outer_radius)).sum(axis=(1, 2))
    outer = np.where(np.abs(outer) < 1e-6, 1e-6, outer)
    return np.clip(inner / outer, -1, 2).astype(np.float32)


def psf_stars(
    gray: np.ndarray,
    residual: np.ndarray,
    labels: np.ndarray,
    stats: np.ndarray,
    noise: float,
    measurement: PsfMeasurement,
) -> tuple[float, np.ndarray]:
    """The PSF's FWHM in pixels, from a segmented frame (edge.proposals.sky_sources): the `quantile` of
    the half-maximum diameters (2 sqrt(area / pi)) of regions peaking `peak_sigma` above the sky, leaving
    out single hot pixels and sources near the frame's brightest pixel; and the boxes (N, 4) of the
    sources at or under that diameter, the frame's stars. NaN and no boxes with under `min_stars`."""
    bright = np.unique(labels[residual > measurement.peak_sigma * noise])
    ceiling = measurement.saturation * float(gray.max())
    diameters, boxes = [], []
    for region in bright[bright > 0]:
        left, top, width, height = stats[region, :4]
        window = np.s_[top : top + height, left : left + width]
        inside = labels[window] == region
        pixels = residual[window][inside]
        if gray[window][inside].max() >= ceiling:
            continue
        area = int((pixels > 0.5 * pixels.max()).sum())
        if area >= 2:  # one pixel above half its peak: a hot pixel or a cosmic ray, not the seeing
            diameters.append(2 * np.sqrt(area / np.pi))
            boxes.append((left, top, left + width, top + height))
    if len(diameters) < measurement.min_stars:
        return float("nan"), np.zeros((0, 4), np.float32)
    fwhm = float(np.quantile(diameters, measurement.quantile))
    return fwhm, np.asarray(boxes, np.float32)[np.asarray(diameters) <= fwhm]
