"""Detection over overlapping tiles at native scale, for frames much larger than the detector
input, and merging the tiles' boxes into one set."""

from __future__ import annotations

import cv2
import numpy as np

from edge.models import Detections, Detector, non_max_suppression, resize_like_runtime
from edge.proposals import SkySources
from edge.tracking import intersection_over_smaller, longer_sides

EDGE_MARGIN = 2.0  # pixels: a box this close to an inner tile border was cut by it
# A cut box that overlaps an uncut box of the same class by this much (intersection over the smaller
# box's area) is a piece of that object, seen whole by another tile: SAHI's default for merging slices
# (IOS 0.5). A piece's box often reaches past the object, guessed from the part it sees.
CUT_PIECE_COVERED = 0.5


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions covering [0, length) with tiles of `tile` overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    count = int(np.ceil((length - overlap) / (tile - overlap)))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


FUSE_OVERLAP = 0.05  # cut pieces overlapping by more than this (of the smaller) are one object


def _fuse_overlapping(boxes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups of boxes that overlap, directly or through others, and each group's union box; repeated
    until no two union boxes overlap (a grown box can reach a piece none of its parts touched).
    Connected components by label propagation over the overlap matrix: each round is a few numpy
    operations on n x n, where fusing one pair at a time costs n^3 box comparisons in Python
    (seconds per frame with hundreds of low-score pieces, as evaluation at score 0.05 keeps)."""
    groups = [np.array([i]) for i in range(len(boxes))]
    current = boxes.astype(np.float64).copy()
    while len(groups) > 1:
        touching = intersection_over_smaller(current, current) > FUSE_OVERLAP
        np.fill_diagonal(touching, False)
        if not touching.any():
            break
        label = np.arange(len(groups))
        while True:
            smallest = np.where(touching, label[None, :], len(groups)).min(axis=1)
            updated = np.minimum(label, smallest)
            if (updated == label).all():
                break
            label = updated
        merged_groups, merged_boxes = [], []
        for value in np.unique(label):
            parts = np.flatnonzero(label == value)
            merged_groups.append(np.concatenate([groups[k] for k in parts]))
            part_boxes = current[parts]
            merged_boxes.append(
                np.concatenate([part_boxes[:, :2].min(axis=0), part_boxes[:, 2:].max(axis=0)])
            )
        groups, current = merged_groups, np.array(merged_boxes)
    return [(group, current[k].astype(boxes.dtype)) for k, group in enumerate(groups)]


def merge_tiles(
    parts: list[tuple[Detections, np.ndarray]], iou_threshold: float, containment: float | None = None
) -> Detections:
    """Merge per-tile detections; each part comes with a (N,) bool 'cut by an inner tile border'.

    A cut box that lies mostly inside an uncut one (another tile saw the whole object) is
    dropped; cut boxes of the same class that overlap across a border are fused into their
    union (an object larger than the overlap); then ordinary NMS removes duplicates.
    """
    detections = Detections.concatenate([d for d, _ in parts])
    if len(detections) == 0:
        return detections
    cut = np.concatenate([c for _, c in parts])
    whole = np.flatnonzero(~cut)
    keep = np.ones(len(detections), bool)
    cut_index = np.flatnonzero(cut)
    if len(cut_index) and len(whole):
        covered = intersection_over_smaller(detections.boxes[cut_index], detections.boxes[whole])
        same_class = detections.class_ids[cut_index][:, None] == detections.class_ids[whole][None, :]
        keep[cut_index[((covered >= CUT_PIECE_COVERED) & same_class).any(axis=1)]] = False
    boxes, scores = detections.boxes.copy(), detections.scores.copy()
    pieces = cut_index[keep[cut_index]]
    for class_id in np.unique(detections.class_ids[pieces]):
        members = pieces[detections.class_ids[pieces] == class_id]
        keep[members] = False
        for group, box in _fuse_overlapping(boxes[members]):
            first = members[group].min()
            boxes[first], scores[first], keep[first] = box, scores[members[group]].max(), True
    fused = Detections(boxes, scores, detections.class_ids).select(np.flatnonzero(keep))
    return non_max_suppression(fused, iou_threshold, containment)


def tile_layout(
    detector: Detector, shape: tuple[int, ...], overlap: int | None = None
) -> list[tuple[int, int, int, int]]:
    """(x0, y0, width, height) of the tiles covering a frame at native scale."""
    height, width = shape[:2]
    tile_h, tile_w = min(detector.height, height), min(detector.width, width)
    overlap = overlap if overlap is not None else max(32, detector.width // 6)
    ys, xs = tile_origins(height, tile_h, overlap), tile_origins(width, tile_w, overlap)
    return [(x0, y0, tile_w, tile_h) for y0 in ys for x0 in xs]


def detect_tile(
    detector: Detector, frame_bgr: np.ndarray, tile: tuple[int, int, int, int]
) -> tuple[Detections, np.ndarray]:
    """Detections in one tile (frame pixels) and which of them touch an inner tile border."""
    height, width = frame_bgr.shape[:2]
    x0, y0, tile_w, tile_h = tile
    found = detector.detect_image(frame_bgr[y0 : y0 + tile_h, x0 : x0 + tile_w], (x0, y0))
    b = found.boxes
    cut = np.zeros(len(found), bool)
    if x0 > 0:
        cut |= b[:, 0] <= x0 + EDGE_MARGIN
    if y0 > 0:
        cut |= b[:, 1] <= y0 + EDGE_MARGIN
    if x0 + tile_w < width:
        cut |= b[:, 2] >= x0 + tile_w - EDGE_MARGIN
    if y0 + tile_h < height:
        cut |= b[:, 3] >= y0 + tile_h - EDGE_MARGIN
    return found, cut


def overview_size(
    detector: Detector, shape: tuple[int, ...], shrink: int | None = None
) -> tuple[float, int, int]:
    """How much the overview pass shrinks a frame of this shape, and the shrunk width and height: whole
    into the input (the card's `overview_fit` "contain"), or until its shorter side fills the input
    ("cover"; its longer side is then tiled); or `shrink` times (a twin's `overview_shrink`)."""
    height, width = shape[:2]
    if shrink:
        return 1 / shrink, width // shrink, height // shrink
    ratios = (detector.width / width, detector.height / height)
    scale = min(max(ratios) if detector.overview_fit == "cover" else min(ratios), 1.0)
    return scale, min(round(width * scale), width), min(round(height * scale), height)


def shrink_frame(frame_bgr: np.ndarray, width: int, height: int, exact_shrink: bool) -> np.ndarray:
    """The frame shrunk to width x height for the overview pass: as the runtime resizes inputs
    (resize_like_runtime), except that without exact_shrink a shrink of 2 times or more takes
    OpenCV's INTER_AREA only for its whole-number part (the means of step x step pixels), then
    INTER_LINEAR the rest of the way (under 2 times). INTER_AREA is fast only for whole-number
    factors: shrinking 1280x720 to 569x320 in one step made the overview pass cost 39 M arm64
    instructions more than this way does (docs/detector.md, "A finer overview"). Here and not in
    resize_like_runtime, which every model's input and crop goes through: of those, only the
    overview shrinks a whole tiled frame by a fractional factor on every frame."""
    frame_height, frame_width = frame_bgr.shape[:2]
    step = min(frame_width // width, frame_height // height)
    if exact_shrink or step < 2 or frame_width % step or frame_height % step:
        return resize_like_runtime(frame_bgr, width, height, exact_shrink)
    whole = cv2.resize(frame_bgr, (frame_width // step, frame_height // step), interpolation=cv2.INTER_AREA)
    if whole.shape[:2] == (height, width):
        return whole
    return cv2.resize(whole, (width, height), interpolation=cv2.INTER_LINEAR)


def overview_layout(
    detector: Detector, shape: tuple[int, ...], shrink: int | None = None
) -> list[tuple[int, int, int, int]]:
    """The overview pass's tiles (detect_overview), in the shrunk and padded frame's pixels: one
    unless the card's `overview_fit` is "cover"; one, the whole shrunk frame, when the detector has a
    frame model of its size (its twin's `overview_shrink`)."""
    _, small_w, small_h = overview_size(detector, shape, shrink)
    if (small_h, small_w) in detector.frame_models:
        return [(0, 0, small_w, small_h)]
    return tile_layout(detector, (max(small_h, detector.height), max(small_w, detector.width)))


def detect_overview(
    detector: Detector, frame_bgr: np.ndarray, min_side: float | None = None, shrink: int | None = None
) -> tuple[Detections, np.ndarray]:
    """The whole frame shrunk (overview_size) and padded with its median sky to at least the input, in
    one invoke or tiled like the frame: its boxes of at least `min_side` (default: the card's
    `overview_min_side`) frame pixels, whole (uncut) unless a border between the shrunk frame's tiles
    cut them, so that the merge drops the native tiles' pieces they cover. A tile sees a galaxy
    larger than itself only in pieces; this pass sees it whole (SAHI's "standard prediction" beside
    the slices). With "cover", a 1280x720 frame is shrunk 2.25 times rather than 4, in two invokes
    rather than one, and its galaxies of 64 pixels and more are seen larger (docs/detector.md, "A
    finer overview"). With `shrink` (a twin's `overview_shrink`), the frame is shrunk that many times
    and runs through the detector's frame model of that size in one invoke, where it has one
    (docs/detector.md, "A twin of the finer levels")."""
    height, width = frame_bgr.shape[:2]
    scale, small_w, small_h = overview_size(detector, frame_bgr.shape, shrink)
    # Shrink first, then pad: padding the frame and shrinking that cost 1.4 times the invoke in
    # arm64 instructions (a 1280x1280 fill and resize).
    small = shrink_frame(frame_bgr, small_w, small_h, detector.exact_shrink)
    pad_w, pad_h = max(detector.width - small_w, 0), max(detector.height - small_h, 0)
    left, top = pad_w // 2, pad_h // 2
    sky = np.median(frame_bgr[::8, ::8].reshape(-1, frame_bgr.shape[2]), axis=0).astype(frame_bgr.dtype)
    padded = cv2.copyMakeBorder(
        small, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=sky.tolist()
    )
    parts = [
        detect_tile(detector, padded, tile) for tile in overview_layout(detector, frame_bgr.shape, shrink)
    ]
    found = Detections.concatenate([part for part, _ in parts])
    cut = np.concatenate([part_cut for _, part_cut in parts])
    found.boxes -= np.array([left, top, left, top], np.float32)
    found.boxes /= scale
    found.boxes[:, [0, 2]] = found.boxes[:, [0, 2]].clip(0, width)
    found.boxes[:, [1, 3]] = found.boxes[:, [1, 3]].clip(0, height)
    large = np.flatnonzero(longer_sides(found.boxes) >= (min_side or detector.overview_min_side))
    return found.select(large), cut[large]


def replaced_by_overview(
    parts: list[tuple[Detections, np.ndarray]], overview: Detections, min_side: float
) -> list[tuple[Detections, np.ndarray]]:
    """The native looks' parts without their uncut boxes of at least min_side pixels that an overview
    box covers (intersection over the smaller box, as cut pieces are judged): for galaxies that large
    the shrunk whole frame's box is the better one (a tile or a twin's largest anchors see them only in
    part), and NMS between the two kept the wrong one often (docs/detector.md, "Overview boxes replace
    the tiles'")."""
    if not len(overview):
        return parts
    kept = []
    for found, cut in parts:
        if len(found):
            covered = intersection_over_smaller(found.boxes, overview.boxes).max(axis=1) >= CUT_PIECE_COVERED
            keep = np.flatnonzero((longer_sides(found.boxes) < min_side) | ~covered | cut)
            found, cut = found.select(keep), cut[keep]
        kept.append((found, cut))
    return kept


def detect_whole(detector: Detector, frame_bgr: np.ndarray) -> Detections:
    """A frame in one look, verified: resized to the input, or through the detector's whole-frame twin
    when one takes frames of this size. The twin's card may ask for the overview pass beside it
    (`overview_min_side`, 256 as exported): the overview's boxes of at least that many pixels join
    and (with `overview_replaces`, as exported) replace the twin's own boxes of that size that they
    cover. The twin's largest anchors are 288 pixels, so it sees the largest galaxies only in part;
    shrunk, the overview sees them whole (docs/detector.md, "Whole-frame twin with the overview"). A
    twin of the finer levels only (export --frame-strides) asks for the overview of the frame shrunk
    `overview_shrink` times from its `overview_min_side` (docs/detector.md, "A twin of the finer
    levels"). With the twin's `overview_gate_side`, the overview runs only when the twin's own
    candidates hold a box at least that large (docs/detector.md, "The overview gated by the twin's
    candidates")."""
    twin = detector.frame_models.get(frame_bgr.shape[:2])
    if twin is None or not twin.overview_min_side:
        return detector.detect(frame_bgr)
    found = detector.detect_image(frame_bgr)
    parts = [(found, np.zeros(len(found), bool))]
    return _finish_with_overview(
        detector,
        frame_bgr,
        parts,
        twin.overview_min_side,
        twin.overview_replaces,
        twin.overview_shrink,
        twin.overview_gate_side,
    )


def detect_tiled(detector: Detector, frame_bgr: np.ndarray, overlap: int | None = None) -> Detections:
    """Detections over tiles of the detector's input size, at the frame's native scale (and over the
    whole frame, shrunk, when the card asks for an overview)."""
    parts = [
        detect_tile(detector, frame_bgr, tile) for tile in tile_layout(detector, frame_bgr.shape, overlap)
    ]
    if detector.overview_min_side:
        return _finish_with_overview(
            detector,
            frame_bgr,
            parts,
            detector.overview_min_side,
            detector.overview_replaces,
            gate_side=detector.overview_gate_side,
        )
    return detector.finish(frame_bgr, merge_tiles(parts, detector.iou_threshold, detector.containment))


def _finish_with_overview(
    detector: Detector,
    frame_bgr: np.ndarray,
    parts: list[tuple[Detections, np.ndarray]],
    min_side: float,
    replaces: bool,
    shrink: int | None = None,
    gate_side: float | None = None,
) -> Detections:
    """The native looks' parts (tiles, or a twin's one look) merged with the overview pass's boxes of
    at least min_side, which first replace the parts' boxes of that size they cover when asked. With
    gate_side, the overview runs only when the parts hold a candidate box at least that large: it
    keeps only large boxes, and a native look that sees galaxies whole up to about min_side nearly
    always proposes some large box where such a galaxy is (on 1,000 judging frames the gate closed on 3
    whose overview kept a box, with the same confident detections). A frame of small galaxies skips
    its invokes."""
    if gate_side is not None and all((longer_sides(found.boxes) < gate_side).all() for found, _ in parts):
        return detector.finish(frame_bgr, merge_tiles(parts, detector.iou_threshold, detector.containment))
    overview, cut = detect_overview(detector, frame_bgr, min_side, shrink)
    if replaces:
        parts = replaced_by_overview(parts, overview, min_side)
    merged = merge_tiles([*parts, (overview, cut)], detector.iou_threshold, detector.containment)
    return detector.finish(frame_bgr, merged)


class RollingTiles:
    """Tiled detection for a live view that spreads the tiles over frames: each frame runs the
    next `per_frame` tiles and reuses the others' latest results, so every frame costs about
    the same and the whole field is refreshed every ceil(tiles / per_frame) frames. For a
    telescope's field, which moves slowly if at all, that holds a camera's frame rate on a
    small CPU where all tiles of every frame would not. The first frame runs all tiles. The
    card's overview pass (all its tiles in one turn) and the verifier's pass over the sky (its
    proposals and the PSF width), when the cards ask for them, take their turns as more tiles."""

    OVERVIEW = (-1, -1, -1, -1)  # the overview pass's place in the rotation
    SKY = (-2, -2, -2, -2)  # the verifier's pass over the whole frame's sky (Verifier.sky)

    def __init__(self, detector: Detector, per_frame: int) -> None:
        self.detector, self.per_frame = detector, max(1, per_frame)
        self.shape: tuple[int, ...] | None = None
        self.tiles: list[tuple[int, int, int, int]] = []
        self.latest: list[tuple[Detections, np.ndarray] | None] = []
        self.cursor = 0
        self.sky: SkySources | None = None  # the latest pass: its PSF width (and sky-subtracted pixels, for
        # the candidates' concentrations) serve every tile's verification until the sky's next turn

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        if frame_bgr.shape != self.shape:
            self.shape = frame_bgr.shape
            self.tiles = tile_layout(self.detector, frame_bgr.shape)
            if self.detector.overview_min_side:
                self.tiles.append(self.OVERVIEW)
            self.sky = self.detector.sky(frame_bgr)  # before the tiles: they are verified with its PSF
            if self.sky is not None:
                self.tiles.append(self.SKY)
            self.latest = [None] * len(self.tiles)
            for k, tile in enumerate(self.tiles):  # in turn: the sky's turn reads the tiles' results
                self.latest[k] = self._detect_verified(frame_bgr, tile, first=True)
            self.cursor = 0
        else:
            for _ in range(min(self.per_frame, len(self.tiles))):
                self.latest[self.cursor] = self._detect_verified(frame_bgr, self.tiles[self.cursor])
                self.cursor = (self.cursor + 1) % len(self.tiles)
        parts = [part for part in self.latest if part is not None]
        overview = self.latest[self.tiles.index(self.OVERVIEW)] if self.OVERVIEW in self.tiles else None
        if overview is not None and self.detector.overview_replaces:
            min_side = self.detector.overview_min_side
            parts = [
                part if part is overview else replaced_by_overview([part], overview[0], min_side)[0]
                for part in parts
            ]
        merged = merge_tiles(parts, self.detector.iou_threshold, self.detector.containment)
        return self.detector.keep_confident(merged)

    def _detect_verified(self, frame_bgr: np.ndarray, tile: tuple[int, int, int, int], first: bool = False):
        # Each tile's candidates are verified when the tile runs (patches from the whole frame), so
        # a frame costs only its refreshed tiles' verification too.
        if tile == self.OVERVIEW:
            found, cut = detect_overview(self.detector, frame_bgr)
        elif tile == self.SKY:
            if not first:  # the first frame's pass ran before its tiles
                self.sky = self.detector.sky(frame_bgr)
            # Against the tiles' latest candidates, as a whole frame's proposals are against its own.
            others = Detections.concatenate(
                [part[0] for k, part in enumerate(self.latest) if part and self.tiles[k] != tile]
            )
            found = self.detector.with_proposals(others, self.sky).select(slice(len(others), None))
            cut = np.zeros(len(found), bool)
        else:
            found, cut = detect_tile(self.detector, frame_bgr, tile)
        verified = self.detector.rescore(frame_bgr, found, self.sky)
        # The box refiner looks at the tile's detector boxes that will be kept (the whole-frame path
        # refines after the merge; here each box is refined once, when its tile runs).
        boxed = (verified.scores >= self.detector.score_threshold) & (tile != self.SKY)
        return self.detector.refine(frame_bgr, verified, found.scores, boxed), cut

    @property
    def refresh_frames(self) -> int:
        """Frames between two runs of the same tile."""
        return -(-len(self.tiles) // self.per_frame) if self.tiles else 1


def needs_tiling(
    detector: Detector, frame_shape: tuple[int, ...], factor: float = 1.5, twins: bool = True
) -> bool:
    """Tile when the frame is much larger than the detector input (a downscaled whole frame
    would shrink small galaxies below what the detector can see) and no whole-frame twin of the
    detector takes frames of its size (with `twins`)."""
    height, width = frame_shape[:2]
    if twins and (height, width) in detector.frame_models:
        return False
    return max(height / detector.height, width / detector.width) > factor


def detect_frame(detector: Detector, frame_bgr: np.ndarray) -> Detections:
    """The runtime's default: native-scale tiles for frames much larger than the input, else the
    whole frame in one look (detect_whole)."""
    if needs_tiling(detector, frame_bgr.shape):
        return detect_tiled(detector, frame_bgr)
    return detect_whole(detector, frame_bgr)
