"""The runtime's model wrappers on tiny int8 models with known behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.interpreter import ModelError, interpreter_module, runtime_name
from edge.models import Classifier, Detections, Detector, dihedral_views, non_max_suppression
from galaxy_edge.errors import GalaxyEdgeError
from tests.conftest import blob_frame

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
    with pytest.raises(GalaxyEdgeError, match="anchors_center_yxhw"):
        Detector(broken)


def test_edgetpu_model_without_libedgetpu_says_so(tiny_models, tmp_path: Path) -> None:
    compiled = tmp_path / "tiny_detector_int8_edgetpu.tflite"
    shutil.copy(tiny_models["detector"], compiled)
    with pytest.raises(ModelError, match="libedgetpu"):
        Detector(compiled)
