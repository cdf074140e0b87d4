"""Tiling with merging across tile borders, and the IoU tracker."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np

from edge.models import Detections, Detector, resize_like_runtime
from edge.tiling import (
    CUT_PIECE_COVERED,
    FUSE_OVERLAP,
    RollingTiles,
    _fuse_overlapping,
    detect_frame,
    detect_overview,
    detect_tiled,
    merge_tiles,
    needs_tiling,
    overview_layout,
    overview_size,
    shrink_frame,
    tile_layout,
    tile_origins,
)
from edge.tracking import IouTracker, intersection_over_smaller
from tests.conftest import blob_frame


def test_tile_origins_cover_with_overlap() -> None:
    for length, tile, overlap in [(1280, 320, 53), (720, 320, 53), (300, 320, 32), (641, 64, 32)]:
        starts = tile_origins(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == max(length, min(tile, length))
        for a, b in itertools.pairwise(starts):
            assert a + tile - b >= overlap


def test_merge_drops_cut_boxes_seen_whole_elsewhere_and_fuses_pieces() -> None:
    whole = Detections(
        np.array([[90, 10, 110, 30]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int32)
    )
    cut = Detections(
        np.array([[90, 10, 100, 30]], np.float32), np.array([0.95], np.float32), np.zeros(1, np.int32)
    )
    merged = merge_tiles([(whole, np.array([False])), (cut, np.array([True]))], 0.5)
    assert merged.boxes.tolist() == [[90, 10, 110, 30]]
    # An object bigger than the overlap is cut in both tiles: the pieces become one box.
    left = Detections(
        np.array([[50, 40, 130, 90]], np.float32), np.array([0.7], np.float32), np.zeros(1, np.int32)
    )
    right = Detections(
        np.array([[110, 42, 200, 88]], np.float32), np.array([0.8], np.float32), np.zeros(1, np.int32)
    )
    merged = merge_tiles([(left, np.array([True])), (right, np.array([True]))], 0.5)
    assert merged.boxes.tolist() == [[50, 40, 200, 90]] and merged.scores.tolist() == [np.float32(0.8)]


def test_a_cut_piece_reaching_past_the_whole_object_is_dropped() -> None:
    """The case from the Hubble sample: a tile's bottom border cuts a round galaxy, and the piece's box
    reaches above the galaxy (guessed from the half it sees). It lies 0.59 inside the whole galaxy's
    box from the next tile: IoU 0.40, so NMS alone keeps both."""
    whole = Detections(
        np.array([[194.6, 490.2, 245.8, 542.2]], np.float32),
        np.array([0.63], np.float32),
        np.zeros(1, np.int32),
    )
    piece = Detections(
        np.array([[186.6, 480.8, 252.5, 519.0]], np.float32),
        np.array([0.51], np.float32),
        np.zeros(1, np.int32),
    )
    covered = float(intersection_over_smaller(piece.boxes, whole.boxes)[0, 0])
    assert CUT_PIECE_COVERED <= covered < 0.6
    merged = merge_tiles([(whole, np.array([False])), (piece, np.array([True]))], 0.5, 0.8)
    np.testing.assert_allclose(merged.boxes, whole.boxes)
    # A neighbour cut by the border, overlapping the whole galaxy less, stays.
    neighbour = Detections(
        np.array([[230.0, 500.0, 290.0, 519.0]], np.float32),
        np.array([0.5], np.float32),
        np.zeros(1, np.int32),
    )
    merged = merge_tiles([(whole, np.array([False])), (neighbour, np.array([True]))], 0.5, 0.8)
    assert len(merged) == 2


def test_fused_pieces_grow_until_no_union_overlaps() -> None:
    boxes = np.array(
        [
            [0, 0, 10, 10],
            [8, 0, 20, 10],  # touches the first
            [21, 0, 30, 10],  # touches neither alone, but their union's right edge is at 20: apart
            [100, 100, 110, 110],
            [105, 108, 120, 130],  # touches the fourth
            [115, 95, 125, 104],  # touches only the union of the fourth and fifth (100-120 x 100-130)
        ],
        np.float32,
    )
    groups = {tuple(sorted(group.tolist())): box.tolist() for group, box in _fuse_overlapping(boxes)}
    assert groups == {
        (0, 1): [0, 0, 20, 10],
        (2,): [21, 0, 30, 10],
        (3, 4, 5): [100, 95, 125, 130],
    }
    # Many pieces (as at evaluation's score 0.05): the same fixed point as fusing one pair at a time.
    rng = np.random.default_rng(4)
    corners = rng.uniform(0, 2000, (400, 2))
    many = np.column_stack([corners, corners + rng.uniform(3, 30, (400, 2))]).astype(np.float32)
    fused = np.array([box for _, box in _fuse_overlapping(many)])
    touching = intersection_over_smaller(fused, fused) > FUSE_OVERLAP
    np.fill_diagonal(touching, False)
    assert not touching.any() and len(fused) < len(many)


def test_tiled_detection_finds_every_blob_once(tiny_models) -> None:
    detector = Detector(tiny_models["detector"])
    rng = np.random.default_rng(2)
    blobs = []
    while len(blobs) < 25:
        x, y = int(rng.integers(0, 312)), int(rng.integers(0, 232))
        if all(abs(x - bx) > 20 or abs(y - by) > 20 for bx, by, _ in blobs):
            blobs.append((x, y, (255, 255, 255)))
    frame = blob_frame(320, 240, blobs)
    assert needs_tiling(detector, frame.shape)
    found = detect_tiled(detector, frame, overlap=24)
    centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    assert len(found) == len(blobs)
    for x, y, _ in blobs:
        assert np.hypot(*(centres - [x + 4, y + 4]).T).min() <= 4


def test_nested_boxes_are_suppressed_only_with_containment() -> None:
    from edge.models import non_max_suppression

    found = Detections(
        np.array([[10, 10, 60, 60], [28, 28, 40, 40], [70, 10, 90, 30], [30, 30, 80, 80]], np.float32),
        np.array([0.9, 0.8, 0.7, 0.6], np.float32),
        np.zeros(4, np.int32),
    )
    # IoU of the core with the galaxy is 0.06: NMS alone keeps it; the neighbour overlaps 0.36.
    assert len(non_max_suppression(found, 0.5)) == 4
    kept = non_max_suppression(found, 0.5, containment=0.8)
    assert kept.boxes.tolist() == [[10, 10, 60, 60], [70, 10, 90, 30], [30, 30, 80, 80]]


def test_rolling_tiles_spread_the_work_and_catch_up_with_the_field(tiny_models) -> None:
    detector = Detector(tiny_models["detector"])
    invokes = []
    original = detector.detect_image
    detector.detect_image = lambda image, offset=(0.0, 0.0): invokes.append(offset) or original(image, offset)
    first = blob_frame(320, 240, [(20, 20, (255, 255, 255)), (250, 180, (255, 255, 255))])
    tiles = len(tile_layout(detector, first.shape))
    rolling = RollingTiles(detector, per_frame=2)
    assert len(rolling.detect(first)) == 2 and len(invokes) == tiles  # the first frame runs every tile
    assert rolling.refresh_frames == -(-tiles // 2)
    moved = blob_frame(320, 240, [(20, 20, (255, 255, 255)), (150, 100, (255, 255, 255))])
    for _ in range(rolling.refresh_frames):
        invokes.clear()
        found = rolling.detect(moved)
        assert len(invokes) == 2
    # After one refresh period the result is what full tiling of the new frame gives.
    np.testing.assert_allclose(np.sort(found.boxes, 0), np.sort(detect_tiled(detector, moved).boxes, 0))


def test_the_overview_pass_sees_the_whole_frame_and_keeps_its_large_boxes(tiny_models) -> None:
    """With the card's overview_min_side, a tiled frame also runs whole, shrunk into the input and
    padded with its sky level: the boxes of at least that size come back in frame pixels as whole
    boxes and cover the tiles' pieces of the same object in the merge; RollingTiles gives the pass a
    turn of its own."""
    detector = Detector(tiny_models["detector"])  # 64x64 input
    frame = np.full((240, 320, 3), 30, np.uint8)
    frame[:, 0] = 230  # marks the overview's input: its left column averages to 30 + 200 / 5 = 70
    frame[100:108, 100:108] = 255
    overviews = []
    original = detector.detect_image

    def detect_image(image: np.ndarray, offset=(0.0, 0.0)) -> Detections:
        if not (image[0, 0, 0] == 30 and image[20, 0, 0] == 70):  # a tile
            return original(image, offset)
        overviews.append(image)
        # 240 rows shrink to 48, padded by 8 above and below with the sky level
        assert image.shape[:2] == (64, 64) and (image[:8] == 30).all() and (image[56:] == 30).all()
        boxes = np.array([[4, 6, 66, 50], [20, 28, 22, 30]], np.float32)  # a large box, a small one
        return Detections(boxes, np.array([0.8, 0.9], np.float32), np.zeros(2, np.int32))

    detector.detect_image = detect_image
    tiles = len(tile_layout(detector, frame.shape))
    assert not detector.overview_min_side and len(detect_tiled(detector, frame)) == 1
    assert not overviews  # off: tiles only
    detector.overview_min_side = 100
    large, cut = detect_overview(detector, frame)
    assert large.boxes.tolist() == [[20, 0, 320, 210]] and not cut.any()  # frame pixels, clipped
    piece = Detections(
        np.array([[60, 20, 128, 64]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int32)
    )
    merged = merge_tiles([(piece, np.array([True])), (large, cut)], 0.5)
    assert merged.boxes.tolist() == [[20, 0, 320, 210]]  # the piece lies inside the whole galaxy
    found = detect_tiled(detector, frame)
    assert len(overviews) == 2 and [20, 0, 320, 210] in found.boxes.tolist()
    rolling = RollingTiles(detector, per_frame=1)
    rolling.detect(frame)
    assert len(overviews) == 3 and len(rolling.tiles) == tiles + 1 and rolling.refresh_frames == tiles + 1
    for _ in range(tiles + 1):  # one refresh period: the overview once
        rolling.detect(frame)
    assert len(overviews) == 4


def test_with_overview_replaces_the_overview_boxes_drop_the_tiles_uncut_boxes_they_cover(tiny_models) -> None:
    """The card's overview_replaces: the overview's boxes (of at least overview_min_side) drop the tiles'
    uncut boxes of that size that they cover, in detect_tiled and in RollingTiles alike; the tiles'
    other boxes stay. Off (the default), both are kept where NMS does not pick one."""
    from edge.tiling import replaced_by_overview

    detector = Detector(tiny_models["detector"])  # 64x64 input, 8-pixel anchors, NMS at IoU 0.1
    frame = np.zeros((240, 320, 3), np.uint8)
    # 40 pixels, on the overview's grid (5 times its 4-pixel cells, 8 rows of padding): the tiles'
    # 8-pixel boxes tile it, the overview's one box is the square
    frame[70:110, 110:150] = 255
    frame[40:44, 260:264] = 255  # 4 pixels: under a pixel in the overview, so the tiles' alone
    detector.overview_min_side = 8  # frame pixels: every box here
    assert not detector.overview_replaces

    def on_large(found: Detections) -> np.ndarray:
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        return (np.abs(centres - [130, 90]) < 20).all(axis=1)

    kept = detect_tiled(detector, frame)
    assert on_large(kept).sum() > 3  # the tiles' small boxes and the overview's large one
    detector.overview_replaces = True
    found = detect_tiled(detector, frame)
    assert on_large(found).sum() == 1 and found.boxes[on_large(found)].tolist() == [[110, 70, 150, 110]]
    small = np.hypot(*((found.boxes[:, :2] + found.boxes[:, 2:]) / 2 - [262, 42]).T) < 4
    assert small.sum() == 1 and len(found) == 2
    rolling = RollingTiles(detector, per_frame=2)
    for _ in range(rolling.refresh_frames + 1):
        assert sorted(map(tuple, rolling.detect(frame).boxes.tolist())) == sorted(
            map(tuple, found.boxes.tolist())
        )

    # A cut box (a piece another tile or the merge accounts for) is never dropped here.
    piece = Detections(
        np.array([[130, 90, 150, 110]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int32)
    )
    large = Detections(
        np.array([[120, 80, 160, 120]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int32)
    )
    assert len(replaced_by_overview([(piece, np.array([True]))], large, 8)[0][0]) == 1
    assert len(replaced_by_overview([(piece, np.array([False]))], large, 8)[0][0]) == 0
    assert len(replaced_by_overview([(piece, np.array([False]))], large, 21)[0][0]) == 1  # under min_side


def test_a_covering_overview_fills_the_input_with_the_shorter_side_and_tiles_the_longer(tiny_models) -> None:
    """With the card's overview_fit "cover", the overview shrinks the frame until its shorter side fills
    the input and tiles the rest like the frame: boxes come back in frame pixels, cut only at the
    shrunk tiles' inner border, and those under overview_min_side frame pixels are left out."""
    detector = Detector(tiny_models["detector"])  # 64x64 input
    assert detector.overview_fit == "contain"
    assert overview_size(detector, (240, 320)) == (0.2, 64, 48)
    assert len(overview_layout(detector, (240, 320))) == 1
    detector.overview_fit, detector.overview_min_side = "cover", 10
    scale, width, height = overview_size(detector, (240, 320))
    assert scale == 64 / 240 and (width, height) == (85, 64)
    layout = overview_layout(detector, (240, 320))
    assert layout == [(0, 0, 64, 64), (21, 0, 64, 64)]
    assert overview_size(detector, (32, 40)) == (1.0, 40, 32)  # never enlarged: padded to the input
    frame = np.full((240, 320, 3), 30, np.uint8)
    seen = []

    def detect_image(image: np.ndarray, offset=(0.0, 0.0)) -> Detections:
        if image.shape[:2] != (64, 64) or offset[1] != 0 or image[0, 0, 0] != 30:
            raise AssertionError("only the overview's tiles run here")
        seen.append(offset)
        # one box wholly inside each tile, and one against the first tile's inner (right) border
        shift = np.array([offset[0], 0, offset[0], 0], np.float32)
        boxes = np.array([[10, 10, 50, 50], [40, 20, 64, 50]], np.float32) + shift
        return Detections(boxes, np.array([0.8, 0.7], np.float32), np.zeros(2, np.int32))

    detector.detect_image = detect_image
    found, cut = detect_overview(detector, frame)
    assert seen == [(0, 0), (21, 0)]
    expected = np.array([[10, 10, 50, 50], [40, 20, 64, 50], [31, 10, 71, 50], [61, 20, 85, 50]]) / scale
    np.testing.assert_allclose(found.boxes, expected.clip(0, 320), atol=1e-3)
    # The first tile's box at its right border was cut by the second tile; the second's at the
    # frame's right edge was not.
    assert cut.tolist() == [False, True, False, False]
    detector.overview_min_side = 120  # frame pixels: the 150-pixel boxes come back, the 112.5 ones not
    found, cut = detect_overview(detector, frame)
    np.testing.assert_allclose(found.boxes, expected[[0, 2]], atol=1e-3)
    assert not cut.any()


def test_tracker_keeps_ids_and_votes_classes() -> None:
    tracker = IouTracker(iou_threshold=0.3, max_misses=2, reclassify_every=5)
    boxes = np.array([[10, 10, 30, 30], [100, 100, 140, 120]], np.float32)
    first = tracker.update(boxes, np.array([0.9, 0.8]), 0)
    ids = [t.track_id for t in first]
    for frame in range(1, 4):
        moved = boxes + frame  # drifting a pixel per frame
        again = tracker.update(moved, np.array([0.9, 0.8]), frame)
        assert [t.track_id for t in again] == ids
    track = first[0]
    assert tracker.needs_classification(track, 3)
    track.add_classification(np.array([0.7, 0.3]), 3)
    track.add_classification(np.array([0.5, 0.5]), 4)
    assert np.allclose(track.probabilities, [0.6, 0.4])
    assert not tracker.needs_classification(track, 8) and tracker.needs_classification(track, 9)
    newcomer = tracker.update(np.array([[300, 300, 320, 320]], np.float32), np.array([0.5]), 4)[0]
    assert newcomer.track_id not in ids
    for frame in range(5, 9):
        tracker.update(np.zeros((0, 4), np.float32), np.zeros(0), frame)
    assert not tracker.tracks and len(tracker.all_tracks()) == 3


def test_a_box_dropped_for_containment_drops_nothing_itself() -> None:
    from edge.models import non_max_suppression

    found = Detections(
        np.array([[0, 0, 100, 100], [25, 25, 105, 105], [88, 88, 104, 104]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.zeros(3, np.int32),
    )
    # The second lies 0.88 inside the first (dropped); the third lies wholly inside the second but
    # only 0.56 inside the first, so it stays: containers count only when kept, in score order.
    kept = non_max_suppression(found, 0.9, containment=0.8)
    assert kept.boxes.tolist() == [[0, 0, 100, 100], [88, 88, 104, 104]]


def test_containment_matches_the_greedy_definition_on_random_boxes() -> None:
    """The containment check (one matrix, then a loop over the boxes that have a container) keeps
    exactly what the plain greedy pass keeps: in score order, a box goes when it lies at least
    `containment` inside a kept box of its class."""
    from edge.models import non_max_suppression

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(1, 40))
        corner = rng.uniform(0, 100, (n, 2))
        boxes = np.column_stack([corner, corner + rng.uniform(1, 40, (n, 2))]).astype(np.float32)
        found = Detections(
            boxes, np.sort(rng.uniform(0, 1, n))[::-1].astype(np.float32), rng.integers(0, 2, n)
        )
        kept = []
        for i in range(n):
            inside = [
                max(0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
                * max(0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
                / min(np.prod(boxes[i, 2:] - boxes[i, :2]), np.prod(boxes[j, 2:] - boxes[j, :2]))
                for j in kept
                if found.class_ids[j] == found.class_ids[i]
            ]
            if not any(v >= 0.8 for v in inside):
                kept.append(i)
        result = non_max_suppression(found, 1.0, containment=0.8)
        assert sorted(map(tuple, result.boxes.tolist())) == sorted(map(tuple, boxes[kept].tolist()))


def _count_invokes(detector: Detector, twin: Detector) -> dict[str, int]:
    """Invokes of the tiled network and of its twin, counted from here on."""
    invokes = {"tiled": 0, "twin": 0}
    for name, model in (("tiled", detector), ("twin", twin)):
        original = model.invoke
        model.invoke = lambda tensor, others=(), original=original, name=name: (
            invokes.__setitem__(name, invokes[name] + 1) or original(tensor, others)
        )
    return invokes


def test_a_whole_frame_twin_takes_frames_of_its_size_in_one_invoke(tiny_models, tmp_path) -> None:
    """export --frame-size ... --detector D names the twin in D's card; D then runs frames of the
    twin's size through it (one invoke, no tiles), with D's thresholds, and tiles other sizes."""
    import json
    import shutil

    from export.detector import attach_frame_model
    from galaxy_edge.errors import GalaxyEdgeError
    from tests.tiny_models import build_detector

    folder = tmp_path / "models"
    folder.mkdir()
    for path in (tiny_models["detector"], tiny_models["detector"].with_suffix(".json")):
        shutil.copy(path, folder)
    tiled_path = folder / tiny_models["detector"].name
    twin_path = build_detector(folder, "tiny_detector_240x320_int8", shape=(240, 320))
    card = attach_frame_model(tiled_path, twin_path)
    assert json.loads(card.read_text())["frame_models"] == [twin_path.name]
    attach_frame_model(tiled_path, twin_path)  # again: replaced, not listed twice
    assert json.loads(card.read_text())["frame_models"] == [twin_path.name]

    detector = Detector(tiled_path)
    twin = detector.frame_models[(240, 320)]
    invokes = _count_invokes(detector, twin)
    blobs = [(20, 20, (255, 255, 255)), (250, 180, (255, 255, 255)), (151, 99, (255, 255, 255))]
    frame = blob_frame(320, 240, blobs)
    assert not needs_tiling(detector, frame.shape)
    found = detector.detect(frame)
    assert invokes == {"tiled": 0, "twin": 1}
    centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    assert len(found) == len(blobs)
    for x, y, _ in blobs:
        assert np.hypot(*(centres - [x + 4, y + 4]).T).min() <= 4
    grey = blob_frame(320, 240, [(x, y, (150, 150, 150)) for x, y, _ in blobs])  # scores under 0.99
    assert len(detector.detect(grey)) == len(blobs)
    detector.score_threshold = 0.995  # the detector's threshold governs the twin's boxes
    assert len(detector.detect(grey)) == 0
    detector.score_threshold = 0.6
    other = blob_frame(328, 240, blobs)  # another size: tiles of the 64x64 network
    assert needs_tiling(detector, other.shape) and len(detect_tiled(detector, other)) == len(blobs)
    assert invokes["twin"] == 3 and invokes["tiled"] == len(tile_layout(detector, other.shape))

    from edge.chain import Chain, ChainSettings

    before = dict(invokes)  # a live view's rolling tiles keep to the tiled network, a few tiles a frame
    Chain(detector, None, ChainSettings(tiles_per_frame=2)).detect(frame)
    assert invokes["twin"] == before["twin"] and invokes["tiled"] > before["tiled"]

    twin_path.unlink()
    try:
        Detector(tiled_path)
    except Exception as error:  # ModelError, naming the missing file
        assert str(twin_path) in str(error)
    else:
        raise AssertionError("a missing frame model must fail to load")
    elsewhere = build_detector(tmp_path, "tiny_detector_240x320_int8", shape=(240, 320))
    try:
        attach_frame_model(tiled_path, elsewhere)
    except GalaxyEdgeError as error:
        assert "beside" in str(error)
    else:
        raise AssertionError("a frame model in another folder must be refused")


def _tiny_detector_with_twin(tiny_models, tmp_path) -> Path:
    """A copy of the tiny 64x64 detector whose card names a 240x320 whole-frame twin beside it."""
    import shutil

    from export.detector import attach_frame_model
    from tests.tiny_models import build_detector

    folder = tmp_path / "models"
    folder.mkdir()
    for path in (tiny_models["detector"], tiny_models["detector"].with_suffix(".json")):
        shutil.copy(path, folder)
    tiled_path = folder / tiny_models["detector"].name
    attach_frame_model(tiled_path, build_detector(folder, "tiny_detector_240x320_int8", shape=(240, 320)))
    return tiled_path


def test_a_twin_whose_card_asks_for_the_overview_lets_its_large_boxes_replace_the_twins(
    tiny_models, tmp_path
) -> None:
    """detect_whole: with the twin's overview_min_side, the overview pass runs beside the twin; its
    boxes of that size join and (overview_replaces) replace the twin's boxes of that size that they
    cover, and the twin's other boxes stay. Without it, the twin alone, as Detector.detect.
    detect_frame and the chain agree."""

    from edge.chain import Chain, ChainSettings
    from edge.tiling import detect_frame, detect_whole

    detector = Detector(_tiny_detector_with_twin(tiny_models, tmp_path))
    twin = detector.frame_models[(240, 320)]
    invokes = _count_invokes(detector, twin)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[80:104, 120:144] = 255  # 24 pixels: the twin's 8-pixel anchors tile it, the overview sees it whole
    frame[40:44, 200:204] = 255  # 4 pixels: under a pixel when shrunk 5 times, so the twin's alone

    assert twin.overview_min_side is None
    alone = detect_whole(detector, frame)
    assert invokes == {"tiled": 0, "twin": 1}
    assert np.array_equal(alone.boxes, detector.detect(frame).boxes)
    sides = np.maximum(alone.boxes[:, 2] - alone.boxes[:, 0], alone.boxes[:, 3] - alone.boxes[:, 1])
    assert len(alone) >= 3 and sides.max() < 12  # pieces of the large square, and the small one

    twin.overview_min_side = 8  # frame pixels: every box here
    twin.overview_replaces = True  # as export writes a twin's card
    invokes.update(tiled=0, twin=0)
    found = detect_whole(detector, frame)
    assert invokes == {"tiled": len(overview_layout(detector, frame.shape)), "twin": 1}
    sides = np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
    centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    on_large = (np.abs(centres - [132, 92]) < 12).all(axis=1)
    assert on_large.sum() == 1 and sides[on_large][0] >= 30  # the overview's box (8 input pixels x 5)
    large_box = found.boxes[on_large][0]
    assert large_box[0] <= 120 and large_box[1] <= 80 and large_box[2] >= 144 and large_box[3] >= 104
    on_small = np.hypot(*(centres - [202, 42]).T) < 4
    assert on_small.sum() == 1 and sides[on_small][0] < 12  # not covered: the twin's box stays
    assert len(found) == 2
    assert np.array_equal(detect_frame(detector, frame).boxes, found.boxes)
    assert np.array_equal(Chain(detector, None, ChainSettings()).detect(frame).boxes, found.boxes)

    # The card's cap on boxes (max_detections, 100 here) is per input of the detector's size: the twin,
    # 18.75 times its anchors, keeps all 300 squares of a crowded frame, as the tiles would.
    crowded = blob_frame(
        320, 240, [(x, y, (255, 255, 255)) for x in range(4, 320, 16) for y in range(4, 240, 16)]
    )
    assert detector.decoding.max_detections == 100 and len(twin.anchors) / len(detector.anchors) == 18.75
    assert len(detector.detect(crowded)) == 300


def test_a_twins_overview_gate_runs_the_overview_only_beside_a_large_candidate(tiny_models, tmp_path) -> None:
    """The twin card's overview_gate_side: the overview pass beside the twin runs only when the twin's own
    candidates hold a box with a side of at least that many pixels; otherwise the twin's look is
    finished alone, exactly as the ungated pair finishes a frame whose overview keeps nothing."""
    from edge.tiling import detect_whole

    detector = Detector(_tiny_detector_with_twin(tiny_models, tmp_path))
    twin = detector.frame_models[(240, 320)]
    invokes = _count_invokes(detector, twin)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[80:104, 120:144] = 255  # 24 pixels: the twin sees it in pieces under 12 pixels, the overview whole
    frame[40:44, 200:204] = 255
    twin.overview_min_side, twin.overview_replaces = 8, True
    alone = detector.detect(frame)
    ungated = detect_whole(detector, frame)
    layout = len(overview_layout(detector, frame.shape))
    candidates = detector.detect_image(frame).boxes  # the twin's own look, down to its candidate threshold
    twin_sides = np.maximum(*(candidates[:, 2:] - candidates[:, :2]).T)
    invokes.update(tiled=0, twin=0)

    twin.overview_gate_side = float(twin_sides.max()) + 1  # no candidate that large: the overview is skipped
    gated = detect_whole(detector, frame)
    assert invokes == {"tiled": 0, "twin": 1}
    assert np.array_equal(gated.boxes, alone.boxes) and np.array_equal(gated.scores, alone.scores)

    twin.overview_gate_side = float(twin_sides.max())  # the largest candidate opens it
    invokes.update(tiled=0, twin=0)
    opened = detect_whole(detector, frame)
    assert invokes == {"tiled": layout, "twin": 1} and layout >= 1
    assert np.array_equal(opened.boxes, ungated.boxes) and np.array_equal(opened.scores, ungated.scores)

    # A frame whose overview keeps nothing: gated or not, the same detections.
    small = np.zeros((240, 320, 3), np.uint8)
    small[40:44, 200:204] = 255
    twin.overview_gate_side = None
    invokes.update(tiled=0, twin=0)
    plain = detect_whole(detector, small)
    assert invokes["tiled"] == layout  # ungated: the overview ran, and kept nothing
    twin.overview_gate_side = 1000.0
    assert np.array_equal(detect_whole(detector, small).boxes, plain.boxes)


def test_a_twins_overview_shrink_runs_the_shrunk_frame_through_the_frame_model_of_its_size(
    tiny_models, tmp_path
) -> None:
    """A twin's overview_shrink (a twin of the finer levels, export --frame-strides): its overview is the
    frame shrunk that many times, in one invoke of the detector's frame model of that size when it has
    one, else tiled; the boxes come back in frame pixels either way."""
    from edge.tiling import detect_whole, overview_size
    from export.detector import attach_frame_model
    from tests.tiny_models import build_detector

    tiled_path = _tiny_detector_with_twin(tiny_models, tmp_path)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[80:96, 120:136] = 255  # 16 pixels: the twin's 8-pixel anchors tile it, one cell shrunk twice
    frame[40:44, 200:204] = 255  # 4 pixels: the twin's alone

    def found_and_invokes(detector: Detector) -> tuple[Detections, dict[str, int]]:
        twin = detector.frame_models[(240, 320)]
        twin.overview_min_side, twin.overview_replaces, twin.overview_shrink = 8, True, 2
        invokes = _count_invokes(detector, twin)
        half = detector.frame_models.get((120, 160))
        if half is not None:
            invokes["half"] = 0
            original = half.invoke
            half.invoke = lambda tensor, others=(): (
                invokes.__setitem__("half", invokes["half"] + 1) or original(tensor, others)
            )
        return detect_whole(detector, frame), invokes

    detector = Detector(tiled_path)
    assert overview_size(detector, frame.shape, 2) == (0.5, 160, 120)
    tiled, invokes = found_and_invokes(detector)  # no 160x120 model: the shrunk frame is tiled
    assert (
        invokes == {"tiled": len(overview_layout(detector, frame.shape, 2)), "twin": 1}
        and invokes["tiled"] > 1
    )
    attach_frame_model(
        tiled_path, build_detector(tiled_path.parent, "tiny_detector_120x160_int8", shape=(120, 160))
    )
    detector = Detector(tiled_path)
    assert overview_layout(detector, frame.shape, 2) == [(0, 0, 160, 120)]
    whole, invokes = found_and_invokes(detector)
    assert invokes == {"tiled": 0, "twin": 1, "half": 1}
    for found in (tiled, whole):
        sides = np.maximum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        on_large = (np.abs(centres - [128, 88]) < 6).all(axis=1)
        assert on_large.sum() == 1 and sides[on_large][0] >= 14  # the overview's, twice its shrunk size
        assert (np.hypot(*(centres - [202, 42]).T) < 4).sum() == 1 and len(found) == 2
    np.testing.assert_allclose(whole.boxes, tiled.boxes, atol=1.0)


def test_a_twins_candidate_threshold_takes_its_candidates_lower_for_the_verifier(
    tiny_models, tmp_path
) -> None:
    """decoding.candidate_threshold in a twin's card: with the detector's verifier, frames of the twin's
    size decode candidates down to it instead of the verifier's candidate threshold; tiles, and a
    detector without a verifier, keep their own thresholds."""
    from types import SimpleNamespace

    detector = Detector(_tiny_detector_with_twin(tiny_models, tmp_path))
    twin = detector.frame_models[(240, 320)]
    blobs = [(20, 20, (150, 150, 150)), (250, 180, (150, 150, 150)), (151, 99, (150, 150, 150))]
    grey = blob_frame(320, 240, blobs)  # scores between the card's 0.6 and 0.99
    tile = blob_frame(64, 64, blobs[:1])
    assert twin.decoding.candidate_threshold is None and len(detector.detect_image(grey)) == 3
    detector.verifier = SimpleNamespace(candidate_threshold=0.995)  # all decode_threshold reads of it
    assert len(detector.detect_image(grey)) == 0 and len(detector.detect_image(tile)) == 0
    twin.decoding.candidate_threshold = 0.6
    assert len(detector.detect_image(grey)) == 3 and len(detector.detect_image(tile)) == 0
    detector.verifier = None  # without a verifier the detector's score threshold decides, as before
    twin.decoding.candidate_threshold = 0.999
    assert len(detector.detect_image(grey)) == 3


def test_a_twin_given_for_one_run_takes_frames_of_its_size(tiny_models, tmp_path, run_cli) -> None:
    """--frame-model FILE (Detector(frame_models=...)): a twin the card does not name runs frames of its
    size as an attached one does; one of another network, or a missing file, is refused by name."""
    import json
    import shutil

    from edge.models import ModelError
    from tests.tiny_models import build_detector

    folder = tmp_path / "models"
    folder.mkdir()
    for path in (tiny_models["detector"], tiny_models["detector"].with_suffix(".json")):
        shutil.copy(path, folder)
    tiled_path = folder / tiny_models["detector"].name
    twin_path = build_detector(tmp_path, "tiny_detector_240x320_int8", shape=(240, 320))  # not beside it
    frame = blob_frame(320, 240, [(20, 20, (255, 255, 255)), (250, 180, (255, 255, 255))])
    assert not Detector(tiled_path).frame_models and needs_tiling(Detector(tiled_path), frame.shape)
    detector = Detector(tiled_path, frame_models=[twin_path])
    assert list(detector.frame_models) == [(240, 320)] and not needs_tiling(detector, frame.shape)
    found = detect_frame(detector, frame)
    assert len(found) == 2 and np.array_equal(found.boxes, detector.detect(frame).boxes)

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), frame)
    code, out, err = run_cli("detect", image, "--model", tiled_path, "--frame-model", twin_path, "--json")
    assert code == 0, err
    report = [line for line in out.splitlines() if line.startswith("{")][-1]  # after the twin's build log
    boxes = np.array([d["box"] for d in json.loads(report)["detections"]])
    assert boxes.shape == found.boxes.shape and np.abs(boxes - found.boxes).max() <= 0.06

    card = json.loads(twin_path.with_suffix(".json").read_text())
    card["decoding"]["anchor_spec"] = {"input_size": 64, "strides": [4]}  # another network's anchors
    twin_path.with_suffix(".json").write_text(json.dumps(card))
    for path, words in ((twin_path, "same ssd detector"), (tmp_path / "missing.tflite", "not found")):
        try:
            Detector(tiled_path, frame_models=[path])
        except ModelError as error:
            assert str(path) in str(error) and words in str(error)
        else:
            raise AssertionError(f"{path}: must be refused")


def test_the_overview_shrink_takes_whole_pixel_means_then_the_rest_bilinearly() -> None:
    """shrink_frame: a whole-number factor is OpenCV's INTER_AREA exactly; 2.25 times is the 2 x 2 means,
    then bilinear, within one grey level of INTER_AREA in one step on a smooth frame; exact shrinking
    (edge.resize) and frames the whole-number part does not divide keep the runtime's resize."""
    rows, columns = np.mgrid[0:360, 0:640]
    frame = np.dstack([rows * 0.3 + columns * 0.2, columns * 0.3, rows * 0.6]).astype(np.uint8)
    four = shrink_frame(frame, 160, 90, exact_shrink=False)
    np.testing.assert_array_equal(four, cv2.resize(frame, (160, 90), interpolation=cv2.INTER_AREA))
    small = shrink_frame(frame, 284, 160, exact_shrink=False)
    one_step = cv2.resize(frame, (284, 160), interpolation=cv2.INTER_AREA)
    assert small.shape == (160, 284, 3)
    difference = np.abs(small.astype(int) - one_step)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.5
    np.testing.assert_array_equal(
        shrink_frame(frame, 284, 160, exact_shrink=True), resize_like_runtime(frame, 284, 160, True)
    )
    odd = frame[:, :639]  # 639 is not a multiple of 2
    np.testing.assert_array_equal(
        shrink_frame(odd, 284, 160, exact_shrink=False), resize_like_runtime(odd, 284, 160, False)
    )
