"""Export: int8 conversion of a small CNN, the model card the runtime reads, parity and
Edge TPU readiness reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from classification.model import CNNConfig, build_cnn
from edge.interpreter import load_interpreter
from edge.models import Classifier
from export.card import write_classifier_card
from export.reports import classifier_parity, edgetpu_readiness, write_report
from export.tflite import convert


@pytest.fixture(scope="module")
def small_cnn():
    config = CNNConfig(input_size=32, filters=[8, 16], kernel_sizes=[3, 3], dense_units=16)
    model = build_cnn(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    model.fit(images, labels, epochs=2, batch_size=16, verbose=0)  # moves batch-norm statistics off defaults
    return model, images, labels


@pytest.mark.parametrize("target", ["float32", "float16", "int8"])
def test_conversion_targets(small_cnn, target: str, tmp_path: Path) -> None:
    model, images, _ = small_cnn
    path = tmp_path / f"m_{target}.tflite"
    path.write_bytes(convert(model, target, images, count=32))
    interpreter = load_interpreter(path)
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape"]) == [1, 32, 32, 3]
    expected = np.int8 if target == "int8" else np.float32
    assert detail["dtype"] == expected and interpreter.get_output_details()[0]["dtype"] == expected


def test_int8_model_card_runtime_and_reports(small_cnn, tmp_path: Path) -> None:
    model, images, labels = small_cnn
    path = tmp_path / "galaxy10_classifier_int8.tflite"
    path.write_bytes(convert(model, "int8", images, count=32))
    card_path = write_classifier_card(path, "decals", training={"epochs": 2}, metrics={"note": "test"})
    card = json.loads(card_path.read_text())
    assert card["task"] == "classifier" and len(card["labels"]) == 10 and card["input"]["dtype"] == "int8"
    assert card["file"]["size_bytes"] == path.stat().st_size and len(card["file"]["sha256"]) == 64
    runtime = Classifier(path)
    probabilities = runtime.classify([np.ascontiguousarray(images[0][..., ::-1])])
    assert probabilities.shape == (1, 10) and abs(float(probabilities.sum()) - 1) < 0.05
    parity = classifier_parity(model, path, images, labels, "decals")
    assert 0 <= parity["top1_agreement"] <= 1 and parity["count"] == 64
    assert parity["max_probability_difference"] < 0.5
    readiness = edgetpu_readiness(path)
    assert readiness["ready"], readiness["problems"]
    assert {"CONV_2D", "MAX_POOL_2D"} <= set(readiness["ops"]) and "DELEGATE" not in readiness["ops"]
    _json_path, markdown = write_report(
        {"model": str(path), "parity": parity, "edgetpu": readiness}, tmp_path / "report.json"
    )
    text = markdown.read_text()
    assert "Top-1 agreement" in text and "edgetpu_compiler" in text
    # One row per class present, with its recall change in points.
    rows = [line for line in text.splitlines() if line.endswith(" points |")]
    assert len(rows) == len(parity["per_class"]) > 0
    name, row = next(iter(parity["per_class"].items()))
    change = 100 * (row["int8_recall"] - row["float_recall"])
    assert rows[0].startswith(f"| {name} | {row['count']} |") and f"{change:+.2f} points" in rows[0]


def test_float_model_is_not_edgetpu_ready(small_cnn, tmp_path: Path) -> None:
    model, _images, _ = small_cnn
    path = tmp_path / "float.tflite"
    path.write_bytes(convert(model, "float32"))
    readiness = edgetpu_readiness(path)
    assert not readiness["ready"] and any("float32" in p for p in readiness["problems"])


def test_ship_merges_evaluation_figures_into_the_card(tmp_path: Path) -> None:
    from export.ship import merge_evaluation

    card = tmp_path / "m_int8.json"
    card.write_text(json.dumps({"task": "classifier", "metrics": {"int8_accuracy": 0.9}}))
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(
        json.dumps(
            {
                "model": "m_int8.tflite",
                "data": {
                    "source": "s.h5",
                    "count": 10,
                    "accuracy": 0.8,
                    "curve": [1, 2],
                    "per_class": {"a": {"recall": 0.5}},
                },
                "data_rotations": {"accuracy": 0.85, "gain": 0.05, "cost": "8 invokes per crop"},
                "gz2_spiral_check": {"roc_auc": 0.7},
            }
        )
    )
    metrics = json.loads(merge_evaluation(card, evaluation).read_text())["metrics"]
    assert metrics["int8_accuracy"] == 0.9 and metrics["evaluated_model"] == "m_int8.tflite"
    held_out = metrics["simulated_held_out"]
    assert held_out["accuracy"] == 0.8 and held_out["rotations"]["accuracy"] == 0.85
    assert held_out["per_class_recall"] == {"a": 0.5} and "curve" not in held_out
    assert metrics["real_gz2_spiral_check"]["roc_auc"] == 0.7
    evaluation.write_text(
        json.dumps(
            {
                "model": "d.tflite",
                "score_threshold": 0.35,
                "data": {"source": "frames", "frames": 4},
                "coco": {"map50": 0.6, "pr_curve_iou50": [0.5] * 101},
                "recall_by_size": [{"size": "0-16 px", "count": 3, "recall": 1 / 3}],
                "gz2_small": {"images": 5, "by_shrink": [{"shrink": 4, "recall": 0.8}]},
            }
        )
    )
    merged = json.loads(merge_evaluation(card, evaluation).read_text())["metrics"]
    assert merged["real_gz2_small_galaxies"]["by_shrink"][0]["recall"] == 0.8
    held_out = merged["simulated_held_out"]
    assert held_out["map50"] == 0.6 and "pr_curve_iou50" not in held_out
    assert held_out["recall_by_size"][0]["count"] == 3 and held_out["recall_threshold"] == 0.35
    # A second, larger evaluation goes beside the held-out figures, not over them.
    evaluation.write_text(
        json.dumps({"model": "d.tflite", "data": {"source": "f", "frames": 1000}, "coco": {"map50": 0.58}})
    )
    metrics = json.loads(merge_evaluation(card, evaluation, key="simulated_fresh_frames").read_text())[
        "metrics"
    ]
    assert (
        metrics["simulated_held_out"]["map50"] == 0.6 and metrics["simulated_fresh_frames"]["map50"] == 0.58
    )
    assert metrics["simulated_fresh_frames"]["frames"] == 1000


def test_resolution_floor_goes_from_a_frames_evaluation_into_the_card(tmp_path: Path) -> None:
    from export.ship import merge_evaluation, set_resolution_floor

    card = tmp_path / "m_int8.json"
    card.write_text(json.dumps({"task": "classifier", "labels": ["a"]}))
    evaluation = tmp_path / "evaluation.json"
    frames = {"source": "frames/seed600", "resolution": {"floor_px": 32.0, "min_count": 30, "by_size_px": []}}
    evaluation.write_text(json.dumps({"model": "m_int8.tflite", "frames": frames}))
    assert set_resolution_floor(card, evaluation) == 32.0
    written = json.loads(card.read_text())
    assert written["resolution_floor_px"] == 32.0
    assert written["resolution_floor_chosen_on"]["frames"] == "frames/seed600"
    merged = json.loads(merge_evaluation(card, evaluation).read_text())
    assert merged["metrics"]["simulated_frame_galaxies"]["resolution"]["floor_px"] == 32.0
    frames["resolution"]["floor_px"] = None  # nothing informative: the card keeps what it has
    evaluation.write_text(json.dumps({"frames": frames}))
    assert set_resolution_floor(card, evaluation) is None
    assert json.loads(card.read_text())["resolution_floor_px"] == 32.0
    evaluation.write_text(json.dumps({"data": {}}))
    with pytest.raises(SystemExit, match="no frame galaxies"):
        set_resolution_floor(card, evaluation)


SHIPPED = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.skipif(not (SHIPPED / "galaxy_detector_int8.tflite").is_file(), reason="no shipped detector")
def test_parity_is_measured_again_under_a_changed_card(tmp_path: Path, run_cli) -> None:
    """After a card's decoding changes, export.parity rewrites the cards' top-level figures and the
    export report with the figures the runtime now gives, and keeps the rest of each card."""
    import shutil

    from detection.evaluate import MAP_SCORE_THRESHOLD, coco_evaluation
    from edge.models import Detector
    from export.parity import main as parity_main
    from galaxy_edge.errors import GalaxyEdgeError

    shipped_files = ("galaxy_detector_int8", "galaxy_detector_float32", "galaxy_verifier_int8")
    twins = json.loads((SHIPPED / "galaxy_detector_int8.json").read_text()).get("frame_models", [])
    for name in (*shipped_files, *(Path(twin).stem for twin in twins)):
        for suffix in (".tflite", ".json"):
            shutil.copy(SHIPPED / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    int8, float32 = tmp_path / "galaxy_detector_int8.tflite", tmp_path / "galaxy_detector_float32.tflite"
    frames = tmp_path / "frames"
    code, _, err = run_cli(
        "simulate", "frames", "--n", "2", "--size", "640x360", "--seed", "77", "--out", frames
    )
    assert code == 0, err
    for path in (int8, float32):  # a decoding the figures were not measured with
        card = json.loads(path.with_suffix(".json").read_text())
        card["decoding"]["iou_threshold"] = 0.2
        path.with_suffix(".json").write_text(json.dumps(card))

    code, _, err = run_cli("evaluate", "--detector", "--model", int8, "--data", frames, "--draw", "0",
                           "--out", tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    report = tmp_path / "eval" / "report.json"
    assert (
        parity_main(
            [str(int8), "--float32", str(float32), "--data", str(frames), "--fresh-evaluation", str(report)]
        )
        == 0
    )

    from annotations.dataset import usable_pairs

    pairs = usable_pairs(frames)
    expected = {}
    for name, path in (("int8", int8), ("float32", float32)):
        detector = Detector(path, verify=False)
        assert detector.iou_threshold == 0.2
        detector.score_threshold = MAP_SCORE_THRESHOLD
        expected[name] = coco_evaluation(detector, pairs, ["galaxy"])[0]
    int8_card = json.loads(int8.with_suffix(".json").read_text())
    float32_card = json.loads(float32.with_suffix(".json").read_text())
    for name, card in (("int8", int8_card), ("float32", float32_card)):
        assert card["metrics"][f"{name}_map50"] == pytest.approx(expected[name]["map50"])
        assert card["metrics"]["evaluated_on"] == str(frames) and card["metrics"]["evaluated_frames"] == 2
    assert int8_card["metrics"]["float32_map"] == pytest.approx(expected["float32"]["map"])
    assert "int8_map50" not in float32_card["metrics"]
    shipped = json.loads((SHIPPED / "galaxy_detector_int8.json").read_text())
    kept, before = int8_card["metrics"]["with_verifier"], shipped["metrics"]["with_verifier"]
    assert kept["simulated_held_out"] == before["simulated_held_out"]  # kept; only the fresh set merged
    assert int8_card["verifier"] == shipped["verifier"]
    fresh = int8_card["metrics"]["with_verifier"]["simulated_fresh_frames"]  # the evaluate report merged
    evaluated = json.loads(report.read_text())
    assert fresh["frames"] == 2 and fresh["map50"] == pytest.approx(evaluated["coco"]["map50"])
    report = (tmp_path / "galaxy_detector_int8_report.md").read_text()
    assert f"| mAP@0.5 | {expected['float32']['map50']:.4f} | {expected['int8']['map50']:.4f} |" in report

    missing = tmp_path / "nothing.json"
    with pytest.raises(GalaxyEdgeError, match=r"nothing\.json: no such evaluation report"):
        parity_main(
            [str(int8), "--float32", str(float32), "--data", str(frames), "--evaluation", str(missing)]
        )
    float32.with_suffix(".json").unlink()
    with pytest.raises(GalaxyEdgeError, match=r"galaxy_detector_float32\.json: no such file"):
        parity_main([str(int8), "--float32", str(float32), "--data", str(frames)])
