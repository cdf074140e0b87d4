"""The frame's seeing, measured from its stars, and what the verifier's score makes of it.

A source of 6 pixels is a star under 4-pixel seeing and a galaxy under 2-pixel seeing, and the verifier's
32-pixel patch seldom holds a star to compare with. So each frame's PSF width is measured from its
brightest unsaturated compact sources (the sky proposals' segmentation, edge.proposals), and a small
logistic model on the verifier's logit, the box's size and that width re-scores the verified candidates
(docs/verifier.md, "The frame's seeing"). Written with numpy: edge/ may not import photutils or sep, and
their PSF tools fit models where a half-maximum area is all this needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Features of a verified candidate: the verifier's logit, log2 of the box's width and height over 16
# pixels (edge.models.candidate_priors) and log2 of the frame's PSF FWHM over 4 pixels, with their
# products and squares (a quadratic logistic model).
BASE_FEATURES = ("verifier_logit", "log2_width_over_16", "log2_height_over_16", "log2_psf_fwhm_over_4")
FEATURE_COUNT = 14  # 4 terms, 4 squares, 6 products


@dataclass(frozen=True)
class PsfMeasurement:
    """How a frame's PSF width is measured from its stars (psf_fwhm)."""

    peak_sigma: float = 30.0  # a star measured peaks this far above the sky (filtered noise sigmas)
    quantile: float = 0.2  # of the half-maximum diameters: stars are the smallest sources
    min_stars: int = 5  # fewer measured: no PSF width, and the verifier's own score stands
    saturation: float = 0.95  # of the frame's brightest pixel: flat-topped sources are not measured


@dataclass(frozen=True)
class PsfCalibration:
    """A verifier card's `verification.psf_calibration`: how the PSF is measured and the logistic
    model that re-scores candidates with it (fitted by `galaxy-edge export --psf-calibration`)."""

    intercept: float
    coefficients: tuple[float, ...]
    measurement: PsfMeasurement = PsfMeasurement()

    @staticmethod
    def from_card(spec: dict) -> PsfCalibration:
        measurement = PsfMeasurement(**spec.get("measurement", {}))
        coefficients = tuple(float(c) for c in spec.get("coefficients", ()))
        if len(coefficients) != FEATURE_COUNT:
            raise ValueError(f"psf_calibration needs {FEATURE_COUNT} coefficients")
        if not 0 < measurement.quantile < 1 or measurement.peak_sigma <= 0 or measurement.min_stars < 1:
            raise ValueError("psf_calibration needs 0 < quantile < 1, peak_sigma > 0 and min_stars >= 1")
        if "intercept" not in spec:
            raise ValueError("psf_calibration needs an intercept")
        return PsfCalibration(float(spec["intercept"]), coefficients, measurement)

    def scores(self, logits: np.ndarray, priors: np.ndarray, psf_fwhm: float) -> np.ndarray:
        """The re-scored probabilities of candidates with these verifier logits and priors (N, 3)."""
        features = psf_features(logits, priors, psf_fwhm)
        z = features.astype(np.float64) @ np.asarray(self.coefficients) + self.intercept
        return (1 / (1 + np.exp(-z))).astype(np.float32)


def psf_features(logits: np.ndarray, priors: np.ndarray, psf_fwhm: float | np.ndarray) -> np.ndarray:
    """(N, 14) the calibration's features: BASE_FEATURES, then the product of each pair of them, squares
    included, in row order (x0 x0, x0 x1, ..., x3 x3)."""
    psf_term = np.log2(np.broadcast_to(np.asarray(psf_fwhm, np.float64), (len(logits),))) - 2
    base = np.column_stack([np.asarray(logits, np.float64), np.asarray(priors, np.float64)[:, 1:3], psf_term])
    upper = np.triu_indices(base.shape[1])
    return np.column_stack([base, base[:, upper[0]] * base[:, upper[1]]])


def psf_fwhm(
    gray: np.ndarray,
    residual: np.ndarray,
    labels: np.ndarray,
    stats: np.ndarray,
    noise: float,
    measurement: PsfMeasurement,
) -> float:
    """The PSF's FWHM in pixels, from a segmented frame (edge.proposals.sky_sources): the `quantile` of
    the half-maximum diameters (2 sqrt(area / pi)) of regions peaking `peak_sigma` above the sky, leaving
    out single hot pixels and sources near the frame's brightest pixel. NaN with under `min_stars`."""
    bright = np.unique(labels[residual > measurement.peak_sigma * noise])
    ceiling = measurement.saturation * float(gray.max())
    diameters = []
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
    if len(diameters) < measurement.min_stars:
        return float("nan")
    return float(np.quantile(diameters, measurement.quantile))
