"""The runtime's model wrappers on tiny int8 models with known behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.interpreter import ModelError, interpreter_module, runtime_name
from edge.models import Classifier, Detections, Detector, dihedral_views, non_max_suppression
from edge.resize import area_shrink
from galaxy_edge.errors import GalaxyEdgeError
from tests.conftest import REPO, blob_frame

RED, GREEN, BLUE = (0, 0, 230), (0, 230, 0), (230, 0, 0)  # BGR


def test_runtime_preference_order() -> None:
    assert runtime_name(interpreter_module()) == "ai_edge_litert"


def test_input_quantization_matches_the_tensor_parameters(tiny_models) -> None:
    detector = Detector(tiny_models["detector"])
    scale, zero_point = detector.input["quantization"]
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tensor = detector.preprocess(frame)
    rgb = frame[..., ::-1].astype(np.float64)
    expected = np.clip(np.round(rgb / scale + zero_point), -128, 127).astype(np.int8)
    assert tensor.dtype == np.int8 and np.array_equal(tensor[0], expected)


SHIPPED_DETECTOR = Path(__file__).resolve().parent.parent / "models" / "galaxy_detector_int8.tflite"


@pytest.mark.skipif(not SHIPPED_DETECTOR.exists(), reason="no shipped detector")
@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_raw_pixel_int8_input_is_the_pixels_less_128(color_order: str) -> None:
    """The shipped models take raw pixels at scale 1, zero point -128: the XOR fast path gives the
    lookup table's tensor exactly, in either channel order."""
    detector = Detector(SHIPPED_DETECTOR)
    detector.card.color_order = color_order
    frame = np.random.default_rng(1).integers(0, 256, (detector.height, detector.width, 3), dtype=np.uint8)
    assert detector.input_is_shifted_pixels
    fast = detector.preprocess(frame)
    channels = frame[..., ::-1] if color_order == "RGB" else frame
    assert np.array_equal(fast[0], (channels.astype(np.int16) - 128).astype(np.int8))
    detector.input_is_shifted_pixels = False
    assert np.array_equal(detector.preprocess(frame), fast)


def test_detector_finds_a_blob_where_it_is(tiny_models) -> None:
    detector = Detector(tiny_models["detector"])
    found = detector.detect_image(blob_frame(64, 64, [(40, 16, (255, 255, 255))]))
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0]
    assert abs((x1 + x2) / 2 - 44) <= 2 and abs((y1 + y2) / 2 - 20) <= 2 and found.scores[0] > 0.9
    assert len(detector.detect_image(np.zeros((64, 64, 3), np.uint8))) == 0
    # A larger image is resized to the input: boxes come back in the image's own pixels.
    found = detector.detect_image(blob_frame(128, 128, [(80, 32, (255, 255, 255))], size=16))
    assert len(found) == 1 and abs((found.boxes[0, 0] + found.boxes[0, 2]) / 2 - 88) <= 4


def test_classifier_probabilities_and_rotations(tiny_models) -> None:
    classifier = Classifier(tiny_models["classifier"])
    crops = [np.full((20, 20, 3), color, np.uint8) for color in (RED, GREEN, BLUE)]
    probabilities = classifier.classify(crops)
    assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=0.02)
    assert [classifier.labels[i] for i in probabilities.argmax(axis=1)] == ["red", "green", "blue"]
    lopsided = np.zeros((16, 16, 3), np.uint8)
    lopsided[:, :8] = RED
    assert np.allclose(
        classifier.classify([lopsided], rotations=True), classifier.classify([lopsided]), atol=0.02
    )


def test_dihedral_views_are_the_eight_symmetries() -> None:
    image = np.arange(9).reshape(3, 3)
    views = {v.tobytes() for v in dihedral_views(image)}
    assert len(views) == 8


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    detections = Detections(
        np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32),
        np.array([0.6, 0.9, 0.8], np.float32),
        np.array([0, 0, 0], np.int32),
    )
    kept = non_max_suppression(detections, 0.5)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.8])


def test_box_voting_gives_the_score_weighted_mean_of_the_cluster() -> None:
    detections = Detections(
        np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32),
        np.array([0.75, 0.25, 0.8], np.float32),
        np.array([0, 0, 0], np.int32),
    )
    plain = non_max_suppression(detections, 0.5)
    voted = non_max_suppression(detections, 0.5, voting=True)
    assert voted.scores.tolist() == pytest.approx(plain.scores.tolist())
    np.testing.assert_allclose(voted.boxes, [[50, 50, 60, 60], [0.5, 0, 10.5, 10]], atol=1e-5)


def test_box_voting_keeps_a_zero_area_box_finite() -> None:
    detections = Detections(
        np.array([[5, 5, 5, 5], [20, 20, 30, 30], [21, 20, 31, 30]], np.float32),
        np.array([0.6, 0.7, 0.5], np.float32),
        np.zeros(3, np.int32),
    )
    voted = non_max_suppression(detections, 0.5, voting=True)
    assert np.isfinite(voted.boxes).all()
    np.testing.assert_allclose(voted.boxes[1], [5, 5, 5, 5])


def test_box_voting_is_stable_when_a_near_tie_flips() -> None:
    """One quantization step of a score decides which anchor NMS keeps; voting makes the
    kept box nearly the same either way (the x86 and Pi kernels differ by such a step)."""
    boxes = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [1, 1, 11, 11]], np.float32)
    first = Detections(boxes, np.array([0.50, 0.49, 0.3], np.float32), np.zeros(3, np.int32))
    second = Detections(boxes, np.array([0.49, 0.50, 0.3], np.float32), np.zeros(3, np.int32))
    plain = [non_max_suppression(d, 0.5).boxes[0] for d in (first, second)]
    voted = [non_max_suppression(d, 0.5, voting=True).boxes[0] for d in (first, second)]
    assert np.abs(plain[0] - plain[1]).max() == pytest.approx(3.0)
    assert np.abs(voted[0] - voted[1]).max() < 0.1


def test_box_voting_over_overlapping_pairs_matches_the_whole_iou_matrix() -> None:
    """Voting sweeps the boxes sorted by left edge for the pairs that can overlap (the cheap path on
    arm64); it must give what the kept-by-all IoU matrix gives: crowded, sparse, mixed sizes, nested,
    identical and zero-area boxes."""
    from edge.models import _voted_boxes
    from edge.tracking import iou_matrix

    rng = np.random.default_rng(7)
    for trial in range(40):
        count = int(rng.integers(1, 1500))
        corners = rng.random((count, 2)) * 100
        sizes = rng.random((count, 2)) * rng.choice([1.0, 5.0, 30.0])
        sizes[: count // 10] *= 8  # a few wide boxes: the sweep's reach
        boxes = np.column_stack([corners, corners + sizes]).astype(np.float32)
        boxes[1:4] = boxes[0]  # identical boxes
        if trial % 4 == 0:
            boxes[-1, 2:] = boxes[-1, :2]  # a zero-area box
        scores = rng.random(count).astype(np.float32)
        kept = np.unique(rng.integers(0, count, int(rng.integers(1, 200))))
        weights = np.where(iou_matrix(boxes[kept], boxes) >= 0.4, scores[None, :], 0.0)
        weights[np.arange(len(kept)), kept] = np.maximum(scores[kept], 1e-12)
        expected = (weights @ boxes) / weights.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(_voted_boxes(kept, boxes, scores, 0.4), expected, atol=2e-4)


def test_missing_card_and_wrong_task_are_clear_errors(tiny_models, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.tflite"
    shutil.copy(tiny_models["detector"], lonely)
    with pytest.raises(GalaxyEdgeError, match=r"model card not found: .*lonely\.json"):
        Detector(lonely)
    with pytest.raises(ModelError, match="expected detector"):
        Detector(tiny_models["classifier"])
    broken = tmp_path / "broken.tflite"
    shutil.copy(tiny_models["detector"], broken)
    (tmp_path / "broken.json").write_text(
        json.dumps({"task": "detector", "labels": ["galaxy"], "decoding": {}})
    )
    with pytest.raises(GalaxyEdgeError, match="anchor_grid"):
        Detector(broken)
    # The compact grid and the explicit list (older cards) give the same anchors.
    listed = json.loads(tiny_models["detector"].with_suffix(".json").read_text())
    rows = 64 // 4
    grid = {"height": 64, "width": 64, "levels": [
        {"stride": 4, "rows": rows, "columns": rows, "first_centre_yx": [2.0, 2.0], "sizes_hw": [[8.0, 8.0]]}
    ]}  # fmt: skip
    gridded = {
        **listed,
        "decoding": {k: v for k, v in listed["decoding"].items() if k != "anchors_center_yxhw"},
    }
    gridded["decoding"]["anchor_grid"] = grid
    shutil.copy(tiny_models["detector"], tmp_path / "gridded.tflite")
    (tmp_path / "gridded.json").write_text(json.dumps(gridded))
    np.testing.assert_allclose(
        Detector(tmp_path / "gridded.tflite").anchors, Detector(tiny_models["detector"]).anchors
    )
    floored = tmp_path / "floored.tflite"
    shutil.copy(tiny_models["classifier"], floored)
    card = json.loads(tiny_models["classifier"].with_suffix(".json").read_text())
    (tmp_path / "floored.json").write_text(json.dumps({**card, "resolution_floor_px": -4}))
    with pytest.raises(
        GalaxyEdgeError, match=r"floored\.json: .*resolution_floor_px must be a size in pixels"
    ):
        Classifier(floored)
    card = json.loads(tiny_models["detector"].with_suffix(".json").read_text())
    card["decoding"]["overview_min_side"] = 0
    shutil.copy(tiny_models["detector"], tmp_path / "overview.tflite")
    (tmp_path / "overview.json").write_text(json.dumps(card))
    with pytest.raises(GalaxyEdgeError, match=r"overview\.json: .*overview_min_side must be a size"):
        Detector(tmp_path / "overview.tflite")
    card["decoding"].update(overview_min_side=128, overview_fit="fill")
    (tmp_path / "overview.json").write_text(json.dumps(card))
    with pytest.raises(GalaxyEdgeError, match=r"overview\.json: .*overview_fit must be contain or cover"):
        Detector(tmp_path / "overview.tflite")
    card["decoding"].update(overview_fit="cover", candidate_threshold=1.5)
    (tmp_path / "overview.json").write_text(json.dumps(card))
    with pytest.raises(
        GalaxyEdgeError, match=r"overview\.json: .*candidate_threshold must be a score between"
    ):
        Detector(tmp_path / "overview.tflite")
    for shrink in (1, 2.5, True):
        card["decoding"].update(candidate_threshold=0.2, overview_shrink=shrink)
        (tmp_path / "overview.json").write_text(json.dumps(card))
        with pytest.raises(
            GalaxyEdgeError, match=r"overview\.json: .*overview_shrink must be a whole number"
        ):
            Detector(tmp_path / "overview.tflite")
    card["decoding"].update(overview_shrink=None)
    for gate in (0, -8, True, "128"):
        card["decoding"].update(overview_gate_side=gate)
        (tmp_path / "overview.json").write_text(json.dumps(card))
        with pytest.raises(GalaxyEdgeError, match=r"overview\.json: .*overview_gate_side must be a size"):
            Detector(tmp_path / "overview.tflite")
    card["decoding"].update(overview_gate_side=128)
    (tmp_path / "overview.json").write_text(json.dumps(card))
    assert Detector(tmp_path / "overview.tflite").overview_gate_side == 128


def test_a_twin_may_keep_only_the_detectors_finer_levels() -> None:
    """A frame model's anchor spec must be the detector's or its first levels (export --frame-strides);
    its cap on boxes counts the detector's anchors on those levels only."""
    from edge.models import _finer_levels_of, _input_anchors

    spec = {"input_size": 320, "strides": [8, 16, 32, 64], "sizes": [[6, 11], [19, 33], [57, 97], [167, 288]]}
    spec["aspect_ratios"] = [1.0, 1.7, 0.6]
    fine = {**spec, "strides": [8, 16], "sizes": [[6, 11], [19, 33]]}
    assert _finer_levels_of(spec, spec) and _finer_levels_of(fine, spec) and not _finer_levels_of(spec, fine)
    assert not _finer_levels_of({**fine, "strides": [16, 32], "sizes": [[19, 33], [57, 97]]}, spec)
    assert not _finer_levels_of({**fine, "sizes": [[6, 11], [20, 33]]}, spec)
    assert not _finer_levels_of({**fine, "input_size": 256}, spec)
    assert not _finer_levels_of({**fine, "strides": [], "sizes": []}, spec)
    # 40x40, 20x20, 10x10 and 5x5 cells of 6 anchors: the shipped tile's 12,750
    assert _input_anchors(spec) == (1600 + 400 + 100 + 25) * 6 and _input_anchors(fine) == 2000 * 6
    card = json.loads((REPO / "models" / "galaxy_detector_int8.json").read_text())
    assert _input_anchors(card["decoding"]["anchor_spec"]) == len(
        Detector(REPO / "models" / "galaxy_detector_int8.tflite").anchors
    )


def test_edgetpu_model_without_libedgetpu_says_so(tiny_models, tmp_path: Path) -> None:
    compiled = tmp_path / "tiny_detector_int8_edgetpu.tflite"
    shutil.copy(tiny_models["detector"], compiled)
    with pytest.raises(ModelError, match="libedgetpu"):
        Detector(compiled)


def test_area_shrink_is_exact_area_averaging() -> None:
    # 1 x 6 -> 1 x 4: spans of 1.5 pixels; [0, 1, 2, 3, 4, 5] averages to 1/3, 5/3, 10/3, 14/3.
    row = np.arange(6, dtype=np.uint8).reshape(1, 6)
    assert area_shrink(row, 4, 1).tolist() == [[0, 2, 3, 5]]
    # Spans of 1.5 pixels: (0 + 3 * 0.5) / 1.5 = 1 and (3 * 0.5 + 6) / 1.5 = 5; half-way values round up.
    assert area_shrink(np.array([[0, 3, 6]], np.uint8), 2, 1).tolist() == [[1, 5]]
    assert area_shrink(np.array([[1, 2]], np.uint8), 1, 1).tolist() == [[2]]  # 1.5 rounds up
    # Integer ratios are plain block means, channel by channel.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    blocks = image.reshape(4, 3, 6, 3, 3).astype(float).mean(axis=(1, 3))
    assert np.array_equal(area_shrink(image, 6, 4), np.floor(blocks + 0.5).astype(np.uint8))
    assert np.array_equal(area_shrink(image, 18, 12), image)
    with pytest.raises(ValueError, match="only shrinks"):
        area_shrink(image, 19, 12)


def test_area_shrink_agrees_with_opencv_to_one_step() -> None:
    rng = np.random.default_rng(1)
    for size in (80, 100, 128, 131):
        image = cv2.GaussianBlur(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8), (0, 0), 1.5)
        ours = area_shrink(image, 69, 69).astype(int)
        theirs = cv2.resize(image, (69, 69), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(ours - theirs).max() <= 1 and (ours != theirs).mean() < 0.01


def test_builtin_kernels_load_and_bad_kernels_are_refused(tiny_models) -> None:
    frame = blob_frame(64, 64, [(20, 20, (150, 150, 255))])
    default = Classifier(tiny_models["classifier"]).classify([frame])
    builtin = Classifier(tiny_models["classifier"], kernels="builtin").classify([frame])
    assert builtin.shape == default.shape and np.abs(builtin - default).max() < 0.05
    with pytest.raises(GalaxyEdgeError, match="unknown kernels 'fast'"):
        Classifier(tiny_models["classifier"], kernels="fast")


def test_layer_comparison_names_the_op_where_kernels_part(tmp_path: Path, capsys) -> None:
    """tests.layer_outputs compare: an op whose output differs on identical inputs is listed, a stale
    in-place copy that no consumer inherits is not, and outputs report their largest difference."""
    from tests.layer_outputs import compare

    graph = {
        "ops": [
            {"op": "MUL", "inputs": [0], "outputs": [1]},  # its saved output is overwritten in place
            {"op": "ADD", "inputs": [1], "outputs": [2]},
            {"op": "CONV_2D", "inputs": [2], "outputs": [3]},  # the kernels disagree here
            {"op": "RESHAPE", "inputs": [3], "outputs": [4]},
        ],
        "outputs": [4],
        "runtime": "test",
    }
    same = np.arange(6, dtype=np.int8)
    a = {"0": same, "1": same, "2": same, "3": same, "4": same}
    b = dict(
        a, **{"1": same + 5, "3": same + np.int8([0, 0, 1, 0, 0, 0]), "4": same + np.int8([0, 0, 1, 0, 0, 2])}
    )
    for name, tensors in (("a", a), ("b", b)):
        np.savez(tmp_path / f"{name}.npz", __graph__=np.array(json.dumps(graph)), **tensors)
    compare(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
    printed = capsys.readouterr().out
    assert "op 2 CONV_2D: identical inputs, output differs by up to 1 in 16.67% of its values" in printed
    assert "MUL" not in printed and "RESHAPE" not in printed
    assert "output tensor 4 (6,): largest difference 2" in printed
