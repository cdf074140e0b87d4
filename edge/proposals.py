"""Sky proposals: small sources found by thresholding, for the verifier to judge beside the detector's
candidates.

The detector, at stride 8, never proposes about half of the galaxies under 16 pixels (docs/detector.md,
"Where the misses are"), while a plain threshold over the sky finds most of them. This is the classical
source extraction of SExtractor (a background mesh, a matched filter, a detection threshold), cut down to
what the verifier needs: boxes. edge/ may not import sep (it runs on a bare Pi with numpy, OpenCV and a
TFLite interpreter), so it is written here with OpenCV: a median background on a mesh, a Gaussian filter
about the seeing's size, and hysteresis thresholds (a source is a connected region above `low_sigma`
that peaks above `high_sigma`), whose box is the region's extent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.psf import ConcentrationMeasurement, PsfMeasurement, psf_stars, source_concentration
from edge.tracking import iou_matrix, longer_sides

# Every so many pixels each way of a mesh cell (and of the frame, for the noise) enter the medians, a
# sixteenth of the sorting. Against every pixel, on the 40 held-out simulated frames, the number of
# proposals changes by at most 9 % and 59-86 % of the boxes are identical (scripts/probes/sky_proposals.py
# --sample-steps); the shipped figures were judged with it.
SAMPLE_STEP = 4


@dataclass(frozen=True)
class SkyProposalSettings:
    """A verifier card's `verification.sky_proposals`."""

    smoothing_sigma: float = 1.0  # the matched filter: a Gaussian of this sigma in pixels
    high_sigma: float = 6.0  # a source peaks at least this far above the sky (filtered noise sigmas)
    low_sigma: float = 3.0  # and its box holds its pixels down to this
    min_area: int = 5  # pixels above low_sigma
    background_mesh: int = 64  # side of the background's mesh cells in pixels
    prior_score: float = 0.05  # the detector score the verifier is told for a proposal: the lowest it
    # was trained on (at 0.1 more faint sources pass, and real GZ2 images get 1.3 more boxes each)
    max_proposals: int = 128  # verified a frame, the largest first: a crowded real frame has hundreds,
    # and each costs a verifier look

    @staticmethod
    def from_card(spec: dict) -> SkyProposalSettings:
        settings = SkyProposalSettings(**spec)
        if not 0 < settings.low_sigma <= settings.high_sigma:
            raise ValueError("sky_proposals needs 0 < low_sigma <= high_sigma")
        if settings.smoothing_sigma <= 0 or settings.background_mesh < 8 or settings.min_area < 1:
            raise ValueError("sky_proposals needs smoothing_sigma > 0, background_mesh >= 8, min_area >= 1")
        if settings.max_proposals < 0:
            raise ValueError("sky_proposals.max_proposals must not be negative")
        if not 0 < settings.prior_score < 1:
            raise ValueError("sky_proposals.prior_score must lie between 0 and 1")
        return settings


def sky_background(gray: np.ndarray, mesh: int) -> np.ndarray:
    """The sky under gray (float32, H x W): the median of each mesh x mesh cell, median-filtered over
    3 x 3 cells (so a big galaxy filling a cell does not lift its sky), interpolated bilinearly."""
    height, width = gray.shape
    rows, columns = -(-height // mesh), -(-width // mesh)
    padded = cv2.copyMakeBorder(gray, 0, rows * mesh - height, 0, columns * mesh - width, cv2.BORDER_REFLECT)
    cells = padded.reshape(rows, mesh, columns, mesh)[:, ::SAMPLE_STEP, :, ::SAMPLE_STEP]
    medians = np.median(cells.transpose(0, 2, 1, 3).reshape(rows, columns, -1), axis=2).astype(np.float32)
    if min(rows, columns) >= 3:
        medians = cv2.medianBlur(medians, 3)
    # One more cell each side, extrapolated linearly, so that a sky gradient (vignetting) goes on to the
    # frame's edges instead of flattening past the outer cells' centres. Cell centres map to cell
    # centres (INTER_LINEAR's pixel-centre convention).
    if min(rows, columns) >= 2:
        medians = np.pad(medians, 1, mode="reflect", reflect_type="odd")
    else:
        medians = np.pad(medians, 1, mode="edge")
    sky = cv2.resize(medians, ((columns + 2) * mesh, (rows + 2) * mesh), interpolation=cv2.INTER_LINEAR)
    return sky[mesh : mesh + height, mesh : mesh + width]


@dataclass(frozen=True)
class SkySources:
    """What one pass over a frame's sky finds: its sources' boxes (N, 4) float32 [x1, y1, x2, y2], the
    largest first, the PSF's FWHM in pixels and the boxes of the stars that set it (edge.psf.psf_stars;
    NaN and none when not asked for or not measurable), and the sky-subtracted gray frame and its
    matched-filtered copy (H x W float32; None where the frame has no noise to measure against), from
    which edge.psf measures sources' concentrations."""

    boxes: np.ndarray
    psf_fwhm: float = float("nan")
    residual: np.ndarray | None = None
    filtered: np.ndarray | None = None
    star_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def concentrations(self, boxes: np.ndarray, measurement: ConcentrationMeasurement) -> np.ndarray:
        """(N,) the concentration of each box's source (edge.psf.source_concentration); NaN without
        the sky-subtracted pixels."""
        if self.residual is None or self.filtered is None:
            return np.full(len(boxes), np.nan, np.float32)
        return source_concentration(self.residual, self.filtered, boxes, measurement)

    def star_concentration(self, measurement: ConcentrationMeasurement) -> float:
        """The median concentration of the stars that set the PSF width; NaN without them."""
        if not len(self.star_boxes):
            return float("nan")
        return float(np.median(self.concentrations(self.star_boxes, measurement)))


def sky_sources(
    frame_bgr: np.ndarray, settings: SkyProposalSettings, psf: PsfMeasurement | None = None
) -> SkySources:
    """The frame's sources, one box per connected region above low_sigma that peaks above high_sigma and
    has min_area pixels, the largest first (the caller keeps max_proposals of those it wants: specks of
    a few pixels are mostly noise and stars, and on simulated frames dropping them first costs
    nothing); with `psf`, also the PSF's width measured on the same segmentation."""
    if frame_bgr.ndim == 2:
        gray = frame_bgr.astype(np.float32)
    else:
        gray = cv2.cvtColor(frame_bgr.astype(np.float32), cv2.COLOR_BGR2GRAY)
    residual = gray - sky_background(gray, settings.background_mesh)
    filtered = cv2.GaussianBlur(residual, (0, 0), settings.smoothing_sigma)
    sample = filtered[::SAMPLE_STEP, ::SAMPLE_STEP]
    noise = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    if noise <= 0:  # a flat or synthetic image: no noise to measure sources against
        return SkySources(np.zeros((0, 4), np.float32))
    regions = (filtered > settings.low_sigma * noise).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(regions, connectivity=8)
    peaked = np.zeros(count, bool)
    peaked[labels[filtered > settings.high_sigma * noise]] = True
    peaked[0] = False  # the background
    areas = stats[:, cv2.CC_STAT_AREA]
    chosen = np.flatnonzero(peaked & (areas >= settings.min_area))
    chosen = chosen[np.argsort(-areas[chosen], kind="stable")]
    left, top = stats[chosen, cv2.CC_STAT_LEFT], stats[chosen, cv2.CC_STAT_TOP]
    right, bottom = left + stats[chosen, cv2.CC_STAT_WIDTH], top + stats[chosen, cv2.CC_STAT_HEIGHT]
    boxes = np.column_stack([left, top, right, bottom]).astype(np.float32).reshape(-1, 4)
    if psf is None:
        return SkySources(boxes, float("nan"), residual, filtered)
    fwhm, stars = psf_stars(gray, residual, labels, stats, noise, psf)
    return SkySources(boxes, fwhm, residual, filtered, stars)


def sky_proposals(frame_bgr: np.ndarray, settings: SkyProposalSettings) -> np.ndarray:
    """sky_sources' boxes."""
    return sky_sources(frame_bgr, settings).boxes


def proposals_beside(
    sources: np.ndarray,
    candidates: np.ndarray,
    settings: SkyProposalSettings,
    max_side: float,
    overlap: float,
) -> np.ndarray:
    """The sky proposals a verifier judges beside a detector's candidate boxes (N, 4), from a frame's
    source boxes (sky_sources): those under max_side that overlap no candidate at IoU `overlap` or more
    (the candidate is that source, and no later NMS has to choose between them), the largest
    max_proposals."""
    boxes = sources[longer_sides(sources) < max_side]
    if len(candidates) and len(boxes):
        boxes = boxes[iou_matrix(boxes, np.asarray(candidates, np.float32)).max(axis=1) < overlap]
    return boxes[: settings.max_proposals]
