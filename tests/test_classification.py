"""Classification: Galaxy10 loaders, the offline download path, the CNN builder, metrics,
and small training and tuning runs."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from classification import download
from classification.data import load_folders, load_h5, stratified_split
from classification.evaluate import (
    classification_metrics,
    coverage_accuracy,
    expected_calibration_error,
    spiral_check,
)
from classification.model import CNNConfig, build_cnn, count_parameters
from edge.model_card import read_model_card
from galaxy_edge.errors import GalaxyEdgeError
from tests.conftest import REPO


def _write_h5(path: Path, images: np.ndarray, labels: np.ndarray, **datasets) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("ans", data=labels)
        for name, value in datasets.items():
            f.create_dataset(name, data=value)
    return path


def test_h5_loader_reads_both_variants_and_resizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sdss = _write_h5(
        tmp_path / "sdss.h5",
        rng.integers(0, 255, (12, 69, 69, 3), dtype=np.uint8),
        np.arange(12, dtype=np.uint8) % 10,
    )
    loaded = load_h5(sdss)
    assert (
        loaded.scheme == "sdss"
        and loaded.images.shape == (12, 69, 69, 3)
        and loaded.labels.tolist()[:3] == [0, 1, 2]
    )
    decals_images = np.zeros((4, 256, 256, 3), np.uint8)
    decals_images[:, 96:160, 96:160] = 255
    decals = _write_h5(tmp_path / "decals.h5", decals_images, np.array([0, 5, 9, 2], np.uint8))
    loaded = load_h5(decals, size=64)
    assert loaded.scheme == "decals" and loaded.images.shape == (4, 64, 64, 3)
    assert (
        loaded.images[0, 32, 32, 0] == 255 and loaded.images[0, 2, 2, 0] == 0
    )  # area resize keeps the centre


def test_h5_loader_names_layout_problems(tmp_path: Path) -> None:
    bad_keys = _write_h5(tmp_path / "a.h5", np.zeros((2, 69, 69, 3), np.uint8), np.zeros(2, np.uint8))
    import h5py

    with h5py.File(bad_keys, "a") as f:
        del f["ans"]
    with pytest.raises(GalaxyEdgeError, match=r"a\.h5: expected datasets 'images' and 'ans'"):
        load_h5(bad_keys)
    wrong = _write_h5(tmp_path / "b.h5", np.zeros((2, 69, 69), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(GalaxyEdgeError, match=r"must be \(N, H, W, 3\)"):
        load_h5(wrong)
    labels = _write_h5(tmp_path / "c.h5", np.zeros((2, 69, 69, 3), np.uint8), np.array([0, 12], np.uint8))
    with pytest.raises(GalaxyEdgeError, match=r"labels outside 0\.\.9"):
        load_h5(labels)
    (tmp_path / "d.h5").write_bytes(b"not hdf5")
    with pytest.raises(GalaxyEdgeError, match="not a readable HDF5 file"):
        load_h5(tmp_path / "d.h5")


def test_class_folders_and_stratified_split(tmp_path: Path) -> None:
    from PIL import Image

    for name, count in (("merging", 5), ("round_smooth", 20)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(np.full((40, 40, 3), i, np.uint8)).save(tmp_path / name / f"{i}.png")
    loaded = load_folders(tmp_path, "decals", 32)
    assert loaded.images.shape == (25, 32, 32, 3) and loaded.counts()["merging"] == 5
    train, val, test = stratified_split(loaded.labels, (0.6, 0.2, 0.2), seed=1)
    assert len(set(train) | set(val) | set(test)) == 25 and not set(train) & set(test)
    assert (loaded.labels[val] == 1).sum() == 1 and (loaded.labels[val] == 2).sum() == 4
    (tmp_path / "comets").mkdir()
    with pytest.raises(GalaxyEdgeError, match=r"folders \['comets'\] are not decals class names"):
        load_folders(tmp_path, "decals", 32)


def test_download_fails_at_once_when_offline(tmp_path: Path, monkeypatch) -> None:
    spec = download.GALAXY10["sdss"]
    monkeypatch.setitem(
        download.GALAXY10,
        "sdss",
        download.Galaxy10File("http://127.0.0.1:9/Galaxy10.h5", spec.filename, spec.sha256),
    )
    started = time.perf_counter()
    with pytest.raises(GalaxyEdgeError, match="looks offline"):
        download.download_galaxy10("sdss", tmp_path, timeout=5)
    assert time.perf_counter() - started < 10


def test_download_verifies_an_existing_file_without_the_network(tmp_path: Path, monkeypatch) -> None:
    content = b"galaxy10 stand-in" * 100
    (tmp_path / "Galaxy10.h5").write_bytes(content)
    monkeypatch.setitem(
        download.GALAXY10,
        "sdss",
        download.Galaxy10File(
            "http://127.0.0.1:9/Galaxy10.h5", "Galaxy10.h5", hashlib.sha256(content).hexdigest()
        ),
    )
    assert download.download_galaxy10("sdss", tmp_path) == tmp_path / "Galaxy10.h5"


def test_parameter_count_and_budget() -> None:
    for config in (
        CNNConfig(),
        CNNConfig(filters=[8, 16], kernel_sizes=[3, 5], dense_units=0, input_size=32),
    ):
        assert count_parameters(config) == build_cnn(config).count_params()
    assert count_parameters(CNNConfig()) <= 150_000


def test_a_first_stride_of_two_puts_the_later_layers_on_a_quarter_of_the_pixels() -> None:
    """CNNConfig.first_stride: the same weights (so the same parameter budget), every layer after the first
    convolution at half the resolution each way, or, without the first pooling (first_pool), the stride in
    its place; other strides are refused."""
    config = CNNConfig(filters=[8, 16], kernel_sizes=[3, 3], dense_units=0, input_size=32)
    plain, strided = build_cnn(config), build_cnn(CNNConfig(**{**config.to_dict(), "first_stride": 2}))
    assert plain.count_params() == strided.count_params() == count_parameters(config)
    assert plain.get_layer("conv1").output.shape[1:3] == (16, 16)
    assert strided.get_layer("conv1").output.shape[1:3] == (8, 8)
    assert CNNConfig.from_dict({**config.to_dict(), "first_stride": 2}).first_stride == 2  # a classifier.json
    in_place = build_cnn(CNNConfig(**{**config.to_dict(), "first_stride": 2, "first_pool": False}))
    assert in_place.get_layer("conv1").output.shape[1:3] == (16, 16) and "pool0" not in [
        layer.name for layer in in_place.layers
    ]
    with pytest.raises(ValueError, match="first_stride must be 1 or 2"):
        build_cnn(CNNConfig(**{**config.to_dict(), "first_stride": 3}))


def test_metrics_on_known_probabilities() -> None:
    probabilities = np.array([[0.95, 0.05], [0.55, 0.45], [0.25, 0.75], [0.15, 0.85]], np.float32)
    labels = np.array([0, 1, 1, 1])
    ece, _ = expected_calibration_error(probabilities, labels, bins=5)
    # bins of 0.2: {0.55} wrong, {0.75} right, {0.85, 0.95} right
    assert ece == pytest.approx(0.25 * 0.55 + 0.25 * 0.25 + 0.5 * 0.1, abs=1e-6)
    curve = coverage_accuracy(probabilities, labels, thresholds=[0.0, 0.65])
    assert curve[0] == {"threshold": 0.0, "coverage": 1.0, "accuracy": 0.75}
    assert curve[1]["coverage"] == 0.75 and curve[1]["accuracy"] == 1.0
    ten = np.full((4, 10), 0.01, np.float32)
    ten[:, 5] = [0.9, 0.1, 0.8, 0.05]  # barred spiral probability
    check = spiral_check(ten, np.array([1, 0, 1, 0]), "decals")
    assert check["roc_auc"] == 1.0 and check["best_accuracy"] == 1.0
    metrics = classification_metrics(
        np.eye(10, dtype=np.float32)[[0, 1, 2, 2]], np.array([0, 1, 2, 3]), "decals"
    )
    assert metrics["accuracy"] == 0.75 and metrics["confusion_matrix"][3][2] == 1
    assert metrics["by_part"] is None  # too few to cut into parts


def test_accuracy_by_part_keeps_classes_in_proportion() -> None:
    from classification.evaluate import accuracy_by_part

    # 300 of class 0 all right, 100 of class 1 all wrong: every stratified part is 0.75 right.
    labels = np.array([0] * 300 + [1] * 100)
    correct = labels == 0
    parts = accuracy_by_part(correct, labels, parts=10)
    assert parts["accuracies"] == pytest.approx([0.75] * 10) and parts["part_size"] == 40
    half_width = 1.96 * np.sqrt(0.75 * 0.25 / 400)
    assert parts["interval_95"] == pytest.approx([0.75 - half_width, 0.75 + half_width])
    # An unstratified cut of the same set would not be this even: parts differ once classes are dealt
    # unevenly, as a random 10 % test split would.
    wrong_at_random = np.random.default_rng(1).random(400) < 0.2
    spread = accuracy_by_part(~wrong_at_random, labels, parts=10)
    assert spread["min"] < float((~wrong_at_random).mean()) < spread["max"]


@pytest.mark.slow
def test_small_training_run_learns_and_cli_reports(tmp_path: Path, run_cli) -> None:
    from PIL import Image

    from simulation.stamps import StampSettings, render_stamps, write_h5

    # Two easily told classes (round vs cigar-shaped smooth galaxies), 32 px, a few epochs.
    images, labels, _ = render_stamps(1000, StampSettings(size=32, seed=3, balanced=True), workers=2)
    keep = np.isin(labels, [2, 4])
    data = write_h5(tmp_path / "two.h5", images[keep], labels[keep], "decals", 3)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "config": {
                    "filters": [16, 32, 32],
                    "kernel_sizes": [5, 3, 3],
                    "dense_units": 0,
                    "dropout": 0.1,
                    "learning_rate": 0.003,
                }
            }
        )
    )
    code, out, err = run_cli(
        "train",
        "--classifier",
        "--data",
        data,
        "--size",
        "32",
        "--epochs",
        "15",
        "--batch-size",
        "16",
        "--config",
        config,
        "--out",
        tmp_path / "run",
        "--no-augment",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "classifier.json").read_text())
    assert summary["parameters"] == summary["parameters_estimated"]
    assert summary["best_val_accuracy"] >= 0.7 and "test accuracy" in out  # chance is 0.5
    # A GZ2-shaped folder (labels.csv, 424x424 images) for the real-data check's code path.
    gz2 = tmp_path / "gz2"
    (gz2 / "images").mkdir(parents=True)
    rows = ["galaxy_id,spiral,top_answer,top_answer_name"]
    for i in range(24):
        stamp = images[keep][i]
        Image.fromarray(stamp).resize((424, 424)).save(gz2 / "images" / f"{i}.jpg")
        rows.append(f"{i},{i % 2},0,smooth")
    (gz2 / "labels.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli(
        "evaluate",
        "--classifier",
        "--model",
        tmp_path / "run" / "classifier.keras",
        "--data",
        data,
        "--rotations",
        "--gz2",
        gz2,
        "--out",
        tmp_path / "eval",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["data"]["accuracy"] >= 0.7 and "gain" in report["data_rotations"]
    check = report["gz2_spiral_check"]
    assert 0 <= check["roc_auc"] <= 1 and 0 <= check["rotations"]["roc_auc"] <= 1
    assert check["count"] < 24  # the held-out half only
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file() and (
        tmp_path / "eval" / "reliability.png"
    ).is_file()
    # The int8 file a Pi runs, evaluated through the edge runtime: the same figures to the quantization.
    tflite = tmp_path / "classifier_int8.tflite"
    code, _, err = run_cli(
        "export", tmp_path / "run" / "classifier.keras", "--to", "int8", "--data", data, "--out", tflite
    )
    assert code == 0, err
    evaluate_int8 = ("evaluate", "--classifier", "--model", tflite, "--data", data)
    code, out, err = run_cli(*evaluate_int8, "--rotations", "--out", tmp_path / "eval8")
    assert code == 0, err
    int8 = json.loads((tmp_path / "eval8" / "evaluation.json").read_text())
    assert abs(int8["data"]["accuracy"] - report["data"]["accuracy"]) <= 0.05
    assert abs(int8["data_rotations"]["accuracy"] - report["data_rotations"]["accuracy"]) <= 0.05
    code, _, err = run_cli(*evaluate_int8, "--gradcam", "2", "--out", tmp_path / "e")
    assert code != 0 and "--gradcam needs the .keras model" in err
    # A distillation phase: the trained model teaches itself its rotation ensemble.
    run = tmp_path / "run"
    distil = ("train", "--classifier", "--data", data, "--size", "32", "--batch-size", "16", "--epochs", "2")
    distil += ("--config", run / "classifier.json", "--from", run / "classifier.keras", "--no-augment")
    distil += ("--learning-rate", "3e-4")  # a fine phase: a tenth of the first phase's rate
    taught_run = (*distil, "--teacher", run / "classifier.keras", "--split", "0.8,0.2,0")
    code, out, err = run_cli(*taught_run, "--out", tmp_path / "taught")
    assert code == 0, err
    assert "no test part" in out  # the held-out set lives elsewhere: nothing to report, no crash
    taught = json.loads((tmp_path / "taught" / "classifier.json").read_text())
    assert taught["settings"]["teacher_weight"] == 0.5 and taught["best_val_accuracy"] >= 0.7
    # WiSE-FT: the halfway weights of a model and its fine-tuned descendant classify as well.
    soup = tmp_path / "soup" / "classifier.keras"
    code, _, err = run_cli(
        "average", run / "classifier.keras", tmp_path / "taught" / "classifier.keras", "--out", soup
    )
    assert code == 0, err
    code, _, err = run_cli(
        "evaluate", "--classifier", "--model", soup, "--data", data, "--out", tmp_path / "es"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "es" / "evaluation.json").read_text())["data"]["accuracy"] >= 0.7
    code, _, err = run_cli(*distil, "--teacher", tmp_path / "none.keras", "--out", tmp_path / "t2")
    assert code != 0 and "none.keras: no such teacher model" in err
    # A fine phase with a test part also scores the model it started from on the same images: the
    # first run's own test figure, since the split is the same.
    code, out, err = run_cli(*distil, "--out", tmp_path / "refined")
    assert code == 0, err
    refined = json.loads((tmp_path / "refined" / "classifier.json").read_text())
    assert refined["test_start"]["model"] == str(run / "classifier.keras")
    assert refined["test_start"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    assert refined["test_start"]["count"] == refined["test"]["count"] == summary["test"]["count"]
    assert f"the model it started from: {summary['test']['accuracy']:.4f}" in out


def test_distillation_loss_mixes_label_and_teacher_cross_entropy() -> None:
    from classification.train import allowed_set_crossentropy, distillation_loss, label_accuracy

    predicted = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    masks = np.array([[1, 0, 0], [0, 1, 1]], np.float32)  # a label, and a weak label (class 1 or 2)
    soft = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)
    targets = np.concatenate([masks, soft], axis=1)
    labelled = -np.log([0.7, 0.9])
    taught = -np.array([0.5 * np.log(0.7) + 0.5 * np.log(0.2), np.log(0.6)])
    np.testing.assert_allclose(np.asarray(allowed_set_crossentropy(masks, predicted)), labelled, rtol=1e-5)
    for weight in (0.0, 0.3, 1.0):
        loss = np.asarray(distillation_loss(3, weight)(targets, predicted))
        np.testing.assert_allclose(loss, (1 - weight) * labelled + weight * taught, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(label_accuracy(3)(targets, predicted)), [1.0, 0.0])


def test_teacher_targets_are_the_same_for_every_rotation_and_flip() -> None:
    from classification.model import CNNConfig, build_cnn
    from classification.train import teacher_targets

    model = build_cnn(CNNConfig(input_size=16, num_classes=4, filters=[4], kernel_sizes=[3], dense_units=0))
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    targets = teacher_targets(model, images)
    single = model.predict(images, verbose=0)
    assert np.abs(targets - single).max() > 1e-4  # an untrained CNN is not rotation invariant
    for view in (
        np.rot90(images, 1, axes=(1, 2)),
        images[:, :, ::-1],
        np.rot90(images[:, ::-1], 3, axes=(1, 2)),
    ):
        np.testing.assert_allclose(teacher_targets(model, np.ascontiguousarray(view)), targets, atol=1e-5)


@pytest.mark.slow
def test_tuning_respects_the_budget_and_resumes(tmp_path: Path) -> None:
    from classification.data import ImageSet
    from classification.train import TrainSettings
    from classification.tune import tune_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (60, 24, 24, 3), dtype=np.uint8)
    labels = np.arange(60) % 10
    data = ImageSet(images, labels, "decals", "random")
    settings = TrainSettings(batch_size=32, augment=False, verbose=0)
    result = tune_classifier(
        data, data, tmp_path, trials=3, epochs=1, budget=20_000, settings=settings, input_size=24
    )
    assert result["best_parameters"] <= 20_000
    assert (tmp_path / "tuning.json").is_file() and (tmp_path / "tuner").is_dir()
    assert len(result["trials"]) == 3 and all(t["val_accuracy"] is not None for t in result["trials"])
    again = tune_classifier(
        data, data, tmp_path, trials=3, epochs=1, budget=20_000, settings=settings, input_size=24
    )
    assert len(again["trials"]) == len(result["trials"])  # resumed: nothing ran twice


def test_gradcam_heat_map_has_the_crop_shape_and_unit_range(tmp_path: Path) -> None:
    from classification.gradcam import gradcam, last_conv_layer, save_gradcams

    model = build_cnn(CNNConfig(input_size=32, filters=[8, 16], kernel_sizes=[3, 3], dense_units=0))
    image = np.zeros((32, 32, 3), np.uint8)
    image[12:20, 12:20] = 200
    assert last_conv_layer(model) == "relu1"
    cam, index, probability = gradcam(model, image)
    assert (
        cam.shape == (32, 32)
        and cam.min() >= 0
        and cam.max() <= 1
        and 0 <= index < 10
        and 0 < probability < 1
    )
    saved = save_gradcams(model, image[None], np.array([3]), [f"c{i}" for i in range(10)], tmp_path)
    assert len(saved) == 1 and saved[0].name.startswith("000_true-c3_pred-")


def test_mirrored_strategy_trains_and_saves(tmp_path: Path) -> None:
    from classification.data import ImageSet
    from classification.train import TrainSettings, train_classifier

    rng = np.random.default_rng(0)
    data = ImageSet(
        rng.integers(0, 255, (40, 24, 24, 3), dtype=np.uint8), np.arange(40) % 10, "decals", "random"
    )
    config = CNNConfig(input_size=24, filters=[8], kernel_sizes=[3], dense_units=0)
    settings = TrainSettings(epochs=1, batch_size=8, augment=False, verbose=0, strategy="mirrored")
    model = train_classifier(data, data, config, settings, tmp_path)
    assert (tmp_path / "classifier.keras").is_file() and model.count_params() == count_parameters(config)
    # With weakly labelled images too (compiled under the strategy's scope like the model).
    from classification.train import WeakSet

    allowed = np.zeros((8, 10), np.float32)
    allowed[:, 5:8] = 1  # "one of the spiral classes"
    weak = WeakSet(data.images[:8], allowed, "random")
    train_classifier(data, data, config, settings, tmp_path / "weak", weak=weak)
    assert (tmp_path / "weak" / "classifier.keras").is_file()


def test_multiworker_without_tf_config_is_a_clear_error(monkeypatch) -> None:
    from classification.multiworker import worker_identity

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(GalaxyEdgeError, match="needs TF_CONFIG on every worker"):
        worker_identity()
    monkeypatch.setenv("TF_CONFIG", '{"task": {"index": 0}}')
    with pytest.raises(GalaxyEdgeError, match="not a worker cluster"):
        worker_identity()


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_local_workers_train_in_step(tmp_path: Path, python: str) -> None:
    """`train --strategy multiworker` on two workers at 127.0.0.1: both finish, the chief and the
    other worker write separate files, and their weights are identical (gradients and batch
    normalization statistics were all-reduced; each worker saw half of every batch)."""
    import os
    import subprocess

    import keras

    rng = np.random.default_rng(0)
    labels = np.arange(96) % 10
    images = rng.integers(0, 60, (96, 24, 24, 3), dtype=np.uint8)
    images[:, 8:16, 8:16, labels % 3] = 250  # something to learn
    data = _write_h5(tmp_path / "tiny.h5", images, labels)
    (tmp_path / "config.json").write_text(
        json.dumps({"config": {"filters": [8], "kernel_sizes": [3], "dense_units": 0, "learning_rate": 0.01}})
    )
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    out = tmp_path / "run"
    command = [python, "-m", "galaxy_edge", "train", "--classifier", "--data", str(data), "--size", "24"]
    command += ["--scheme", "decals"]
    command += ["--config", str(tmp_path / "config.json"), "--epochs", "2", "--batch-size", "16"]
    command += ["--no-augment", "--strategy", "multiworker", "--out", str(out)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""}
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    logs = [p.communicate(timeout=600)[0] for p in processes]
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log[-3000:]
    chief, other = out / "classifier.keras", out / "worker_1" / "classifier.keras"
    assert chief.is_file() and other.is_file()
    first, second = keras.models.load_model(chief), keras.models.load_model(other)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    histories = [json.loads((p.parent / "classifier.json").read_text())["history"] for p in (chief, other)]
    assert histories[0]["val_accuracy"] == histories[1]["val_accuracy"]
    assert len(histories[0]["loss"]) == 2


def test_ensemble_weights_prefer_the_better_model() -> None:
    from classification.compare import ensemble, fit_ensemble_weights

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    good = np.full((400, 3), 0.1)
    good[np.arange(400), labels] = 0.8
    noise = rng.dirichlet(np.ones(3), 400)
    weights = fit_ensemble_weights([good, noise], labels)
    assert weights[0] > 0.8 and abs(weights.sum() - 1) < 1e-9
    assert np.allclose(ensemble([good, noise], [1.0, 0.0]), good)


@pytest.mark.slow
def test_kfold_comparison_with_wilcoxon(tmp_path: Path, run_cli) -> None:
    rng = np.random.default_rng(0)
    data = _write_h5(
        tmp_path / "d.h5",
        rng.integers(0, 255, (60, 24, 24, 3), dtype=np.uint8),
        (np.arange(60) % 10).astype(np.uint8),
    )
    for name, filters in (("a", [8]), ("b", [4, 8])):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"config": {"filters": filters, "kernel_sizes": [3] * len(filters), "dense_units": 0}})
        )
    code, out, err = run_cli(
        "evaluate",
        "--classifier",
        "--kfold",
        "3",
        "--configs",
        tmp_path / "a.json",
        tmp_path / "b.json",
        "--data",
        data,
        "--size",
        "24",
        "--epochs",
        "1",
        "--scheme",
        "decals",
        "--out",
        tmp_path / "cv",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "cv" / "evaluation.json").read_text())["kfold"]
    assert len(report["accuracy"]["a"]) == 3 and len(report["accuracy"]["b"]) == 3
    assert 0 <= report["wilcoxon"]["p_value"] <= 1 and "Wilcoxon" in out


def test_augmentation_mirrors_and_rotates() -> None:
    from classification.train import augmentation

    image = np.zeros((1, 9, 9, 3), np.float32)
    image[0, 1, 3] = 1.0  # off every symmetry axis
    flip = augmentation(0).layers[0]
    positions = {
        tuple(np.argwhere(flip(image, training=True).numpy()[0, :, :, 0] == 1)[0]) for _ in range(100)
    }
    assert positions == {(1, 3), (1, 5)}  # itself and its mirror image, not a half turn


def test_training_data_is_shuffled_with_or_without_augmentation() -> None:
    """--no-augment once also dropped the shuffle: the weakly labelled images, appended after the
    labelled ones, then came in batches of their own at the end of every epoch."""
    from classification.train import make_dataset

    images = np.zeros((200, 4, 4, 3), np.uint8)
    labels = np.arange(200)
    for augment in (False, True):
        order = np.concatenate(
            [y.numpy() for _, y in make_dataset(images, labels, 20, 0, augment, shuffle=True)]
        )
        assert sorted(order) == list(labels) and not np.array_equal(order, labels)
    kept = np.concatenate([y.numpy() for _, y in make_dataset(images, labels, 20, 0, False)])
    np.testing.assert_array_equal(kept, labels)  # validation data keeps its order


def _trainable_change(initial_weights: list[np.ndarray], model) -> float:
    return max(
        float(np.abs(a - b.numpy()).max())
        for a, b in zip(initial_weights, model.trainable_weights, strict=True)
    )


def test_from_model_uses_the_given_learning_rate_and_ema_saves_the_average(tmp_path: Path) -> None:
    from classification.data import ImageSet
    from classification.train import TrainSettings, train_classifier

    rng = np.random.default_rng(0)
    data = ImageSet(
        rng.integers(0, 255, (40, 24, 24, 3), dtype=np.uint8), np.arange(40) % 10, "decals", "random"
    )

    def run(learning_rate: float, ema: float, folder: str) -> float:
        # The --from model was compiled with a much larger learning rate than the one asked for.
        initial = build_cnn(
            CNNConfig(input_size=24, filters=[8], kernel_sizes=[3], dense_units=0, learning_rate=0.5)
        )
        before = [w.numpy().copy() for w in initial.trainable_weights]
        config = CNNConfig(
            input_size=24, filters=[8], kernel_sizes=[3], dense_units=0, learning_rate=learning_rate
        )
        settings = TrainSettings(epochs=1, batch_size=8, augment=False, verbose=0, ema=ema, patience=1)
        model = train_classifier(data, data, config, settings, tmp_path / folder, initial_model=initial)
        return _trainable_change(before, model)

    lr = 0.01
    assert run(0.0, 0.0, "zero") == 0.0  # the asked-for rate, not the saved model's 0.5
    # Adam moves a weight by at most about the learning rate per step: five steps move some by
    # more than 1.5 steps' worth; with an average of momentum ~1 the saved model is the one
    # after the first step (the average starts from it), within one step of the start.
    assert run(lr, 0.0, "raw") > 1.5 * lr
    assert run(lr, 0.999999, "ema") <= 1.01 * lr
    with pytest.raises(GalaxyEdgeError, match=r"--ema 1\.0"):
        run(lr, 1.0, "bad")


def test_frame_check_bins_accuracy_and_what_the_reject_option_keeps() -> None:
    from classification.evaluate import frame_check

    names = ["round_smooth", "round_smooth", "merging", "disturbed"]
    # Right, right (but unsure: 0.35 < 0.4), wrong, right: classes 2, 2, 1, 0 of the DECaLS scheme.
    probabilities = np.zeros((4, 10), np.float32)
    probabilities[0, 2] = 0.9
    probabilities[1, [2, 3, 4]] = [0.35, 0.3, 0.3]
    probabilities[2, 0] = 0.8
    probabilities[3, 0] = 0.7
    check = frame_check(
        probabilities, names, np.array([10.0, 20, 20, 300]), np.array([20.0, 50, 2000, 2000]), "decals"
    )
    assert check["count"] == 4 and check["accuracy"] == 0.75 and check["reject_threshold"] == 0.4
    assert check["kept"] == 0.75 and check["kept_accuracy"] == pytest.approx(2 / 3)
    assert [(r["range"], r["count"], r["accuracy"]) for r in check["by_size_px"]] == [
        ("0-16", 1, 1.0),
        ("16-32", 2, 0.5),
        ("256-inf", 1, 1.0),
    ]
    size_16_32 = check["by_size_px"][1]
    assert (
        size_16_32["kept"] == 0.5 and size_16_32["kept_accuracy"] == 0.0
    )  # the unsure right one is rejected
    assert [(r["range"], r["count"]) for r in check["by_snr"]] == [
        ("0-30", 1),
        ("30-100", 1),
        ("1000-inf", 2),
    ]
    with pytest.raises(GalaxyEdgeError, match="not in the decals scheme"):
        frame_check(probabilities[:1], ["smooth_cigar"], np.array([5.0]), np.array([5.0]), "decals")


def _wilson(hits: int, count: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = hits / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z / (1 + z * z / count) * np.sqrt(p * (1 - p) / count + z * z / (4 * count * count))
    return centre - half, centre + half


def test_resolution_floor_is_where_labels_stop_beating_a_constant_answer() -> None:
    from classification.evaluate import resolution_floor

    # (box side, galaxies, right): labels spread evenly over 10 classes, so a constant answer scores 0.1.
    groups = [(10.0, 50, 5), (22.0, 10, 10), (34.0, 50, 40), (70.0, 40, 30)]
    sides = np.concatenate([np.full(n, side) for side, n, _ in groups])
    correct = np.concatenate([np.arange(n) < right for _, n, right in groups])
    labels = np.concatenate([np.arange(n) % 10 for _, n, _ in groups])
    result = resolution_floor(correct, labels, sides)
    rows = {row["range"]: row for row in result["by_size_px"]}
    assert list(rows) == ["8-12", "20-24", "32-40", "64-128"]
    assert rows["32-40"]["accuracy"] == 0.8 and rows["32-40"]["constant_answer"] == 0.1
    assert rows["32-40"]["interval_95"] == pytest.approx(_wilson(40, 50), abs=1e-9)
    assert rows["8-12"]["interval_95"] == pytest.approx(_wilson(5, 50), abs=1e-9)
    assert not rows["8-12"]["informative"] and rows["32-40"]["informative"] and rows["64-128"]["informative"]
    # 20-24 is all right but has 10 galaxies: it counts neither way, so the floor is 32, not 20.
    assert rows["20-24"]["informative"] and result["floor_px"] == 32.0 and result["applied_px"] == 32.0
    assert result["under"]["count"] == 60 and result["under"]["accuracy"] == pytest.approx(15 / 60)
    assert result["over"]["count"] == 90 and result["over"]["accuracy"] == pytest.approx(70 / 90)
    # The floor in use (a card's) is scored as given, whatever these galaxies would choose.
    given = resolution_floor(correct, labels, sides, applied_px=20.0)
    assert given["floor_px"] == 32.0 and given["applied_px"] == 20.0 and given["under"]["count"] == 50
    # A constant answer that matches the classifier: uninformative everywhere, no floor.
    uninformative = resolution_floor(correct, np.where(correct, 1, labels), sides)
    assert uninformative["floor_px"] is None and "under" not in uninformative
    # When the largest bin does not beat a constant answer, nothing does.
    worst = resolution_floor(correct & (sides < 60), labels, sides)
    assert worst["floor_px"] is None


def test_frame_galaxies_are_cut_as_the_chain_cuts_them(tmp_path: Path, run_cli) -> None:
    import csv

    import cv2

    from classification.data import frame_galaxy_crops
    from simulation.frames import TRUTH_FIELDS

    frame = np.full((120, 200, 3), 30, np.uint8)
    frame[50:70, 90:110] = 220  # a 20 x 20 galaxy in the middle
    cv2.imwrite(str(tmp_path / "frame_00000.jpg"), frame)
    rows = [  # the galaxy, a difficult one, one cut by the frame edge, and a star
        ("galaxy", "barred_spiral", 90, 50, 110, 70, 0, 0, 500.0),
        ("galaxy", "merging", 10, 10, 20, 20, 1, 0, 5.0),
        ("galaxy", "merging", 0, 80, 15, 100, 0, 1, 50.0),
        ("star", "", 150, 10, 160, 20, 0, 0, 900.0),
    ]
    with (tmp_path / "truth.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRUTH_FIELDS, restval="0")
        writer.writeheader()
        for kind, name, x1, y1, x2, y2, difficult, truncated, snr in rows:
            values = dict(kind=kind, class_name=name, xmin=x1, ymin=y1, xmax=x2, ymax=y2, snr=snr)
            writer.writerow(
                {"frame": "frame_00000", "difficult": difficult, "truncated": truncated, **values}
            )
    images, names, sides, snrs = frame_galaxy_crops(tmp_path, 69)
    assert images.shape == (1, 69, 69, 3) and names == ["barred_spiral"] and sides.tolist() == [20.0]
    assert snrs.tolist() == [500.0]
    # The crop is 1.5 times the box (the chain's crop scale): the galaxy fills the middle two thirds.
    middle, border = images[0, 30:39, 30:39].mean(), images[0, :8].mean()
    assert middle > 200 and border < 50
    model = REPO / "models" / "galaxy10_classifier_int8.tflite"
    code, _, err = run_cli(
        "evaluate", "--classifier", "--model", model, "--frames", tmp_path, "--out", tmp_path / "eval"
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["frames"]["count"] == 1 and report["frames"]["by_size_px"][0]["range"] == "16-32"
    # The card's resolution floor is the one scored (the chain applies it).
    floor = read_model_card(model).resolution_floor_px
    assert floor and report["frames"]["resolution"]["applied_px"] == floor
    code, _, err = run_cli(
        "evaluate", "--classifier", "--model", model, "--frames", tmp_path / "no", "--out", tmp_path / "e2"
    )  # fmt: skip
    assert code != 0 and "no/truth.csv: not found" in err
    (tmp_path / "truth.csv").write_text("frame,kind,xmin\nframe_00000,galaxy,3\n")
    with pytest.raises(GalaxyEdgeError, match=r"truth\.csv: no column class_name, difficult"):
        frame_galaxy_crops(tmp_path, 69)


def _tiny_model(kernel_value: float, bias_value: float, with_batch_norm: bool = True):
    import keras

    inputs = keras.Input((3,))
    x = keras.layers.Dense(2, name="dense")(inputs)
    if with_batch_norm:
        x = keras.layers.BatchNormalization(name="norm")(x)
    model = keras.Model(inputs, x)
    dense = model.get_layer("dense")
    dense.set_weights([np.full((3, 2), kernel_value, np.float32), np.full(2, bias_value, np.float32)])
    if with_batch_norm:
        norm = model.get_layer("norm")
        gamma, beta, mean, variance = norm.get_weights()
        norm.set_weights([gamma, beta, mean + kernel_value, variance * (1 + kernel_value)])
    return model


def test_mixing_weights_are_normalized_and_checked() -> None:
    from classification.average import mixing_weights

    np.testing.assert_allclose(mixing_weights(4, None), [0.25] * 4)
    np.testing.assert_allclose(mixing_weights(2, [1, 3]), [0.25, 0.75])
    for count, weights in (
        (1, None),
        (2, [1.0]),
        (2, [1.0, -0.5]),
        (2, [0.0, 0.0]),
        (2, [1.0, float("nan")]),
    ):
        with pytest.raises(GalaxyEdgeError):
            mixing_weights(count, weights)


def test_weight_average_is_the_weighted_mean_of_every_variable(tmp_path: Path) -> None:
    from classification.average import average_models

    paths = [tmp_path / "a.keras", tmp_path / "b.keras"]
    _tiny_model(1.0, -1.0).save(paths[0])
    _tiny_model(3.0, 1.0).save(paths[1])
    averaged = average_models(paths, [1, 3])
    kernel, bias = averaged.get_layer("dense").get_weights()
    np.testing.assert_allclose(kernel, 2.5)  # 0.25 * 1 + 0.75 * 3
    np.testing.assert_allclose(bias, 0.5)
    _, _, mean, variance = averaged.get_layer("norm").get_weights()
    np.testing.assert_allclose(mean, 2.5)  # batch-norm statistics are averaged too
    np.testing.assert_allclose(variance, 0.25 * 2 + 0.75 * 4)

    # Without batch norm the model is linear, so averaging weights averages outputs.
    linear = [tmp_path / "la.keras", tmp_path / "lb.keras"]
    models = [_tiny_model(1.0, -1.0, False), _tiny_model(3.0, 1.0, False)]
    for model, path in zip(models, linear, strict=True):
        model.save(path)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    expected = 0.25 * models[0].predict(x, verbose=0) + 0.75 * models[1].predict(x, verbose=0)
    np.testing.assert_allclose(average_models(linear, [1, 3]).predict(x, verbose=0), expected, rtol=1e-5)

    with pytest.raises(GalaxyEdgeError, match=r"la\.keras.*not the same architecture"):
        average_models([paths[0], linear[0]])


def test_average_cli_writes_the_model_and_its_sources(tmp_path: Path, run_cli) -> None:
    paths = [tmp_path / "a.keras", tmp_path / "b.keras"]
    _tiny_model(1.0, 0.0).save(paths[0])
    _tiny_model(2.0, 0.0).save(paths[1])
    first_summary = {"config": {"dense": 2}, "data": {"source": "a.h5"}, "best_val_accuracy": 0.9}
    (tmp_path / "a.json").write_text(json.dumps(first_summary))
    out = tmp_path / "soup" / "soup.keras"
    code, out_text, err = run_cli("average", *paths, "--out", out)
    assert code == 0, err
    assert str(out) in out_text
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["config"] == {"dense": 2}  # `train --config` reads the first model's configuration
    assert "best_val_accuracy" not in summary  # the first model's figure is not the average's
    sources = summary["weight_average"]["sources"]
    assert [s["weight"] for s in sources] == [0.5, 0.5]
    assert sources[0]["data"] == "a.h5" and "data" not in sources[1]

    code, _, err = run_cli("average", paths[0], tmp_path / "missing.keras", "--out", out)
    assert code != 0 and "missing.keras: no such model" in err
    code, _, err = run_cli("average", *paths, "--out", tmp_path / "soup.h5")
    assert code != 0 and "soup.h5" in err
    code, _, err = run_cli("average", *paths, "--weights", "1,x", "--out", out)
    assert code != 0 and "1,x" in err


def test_training_on_frame_galaxies_joins_each_part(tmp_path: Path, run_cli) -> None:
    from classification.data import frame_galaxies
    from simulation.stamps import StampSettings, render_stamps, write_h5

    frames = tmp_path / "frames"
    code, _, err = run_cli(
        "simulate", "frames", "--n", "2", "--size", "320x240", "--seed", "5", "--out", frames
    )
    assert code == 0, err
    galaxies = frame_galaxies(frames, 32)
    assert (
        len(galaxies) >= 4
        and galaxies.images.shape[1:] == (32, 32, 3)
        and "frame galaxies" in galaxies.source
    )
    with pytest.raises(GalaxyEdgeError, match="not in the sdss scheme"):
        frame_galaxies(frames, 32, "sdss")  # simulated frames carry DECaLS classes
    images, labels, _ = render_stamps(200, StampSettings(size=32, seed=3, balanced=True), workers=2)
    data = write_h5(tmp_path / "stamps.h5", images, labels, "decals", 3)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {"filters": [8, 16], "kernel_sizes": [3, 3], "dense_units": 0}}))
    train = ("train", "--classifier", "--data", data, "--size", "32", "--epochs", "1", "--config", config)
    train += ("--split", "0.8,0.2,0", "--frames", frames, "--no-augment")
    code, _, err = run_cli(*train, "--frame-repeat", "3", "--out", tmp_path / "run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "classifier.json").read_text())["data"]
    from classification.data import stratified_split

    frame_train, frame_val, _ = stratified_split(galaxies.labels, (0.8, 0.2, 0.0), 0)
    stamp_train, stamp_val, _ = stratified_split(labels, (0.8, 0.2, 0.0), 0)
    assert sum(summary["train"].values()) == len(stamp_train) + 3 * len(frame_train)
    assert sum(summary["validation"].values()) == len(stamp_val) + len(frame_val)
    assert "frame galaxies" in summary["source"]
    code, _, err = run_cli(*train, "--frame-repeat", "0", "--out", tmp_path / "r0")
    assert code != 0 and "--frame-repeat 0" in err
    # Several folders join; galaxies under --frame-min-px (the resolution floor) are left out.
    from classification.data import frame_galaxy_crops

    sides = frame_galaxy_crops(frames, 32)[2]
    floor = float(np.median(sides))
    large = frame_galaxies(frames, 32, min_side=floor)
    assert len(large) == int((sides >= floor).sum()) < len(galaxies)
    with pytest.raises(GalaxyEdgeError, match=r"no frame galaxy of 10000 pixels or more"):
        frame_galaxies(frames, 32, min_side=1e4)
    both = ("--frames", frames, frames, "--frame-min-px", str(floor), "--out", tmp_path / "r2")
    code, _, err = run_cli(*train[:-5], "--split", "0.8,0.2,0", "--no-augment", *both)
    assert code == 0, err
    summary = json.loads((tmp_path / "r2" / "classifier.json").read_text())["data"]
    frame_train, frame_val, _ = stratified_split(np.concatenate([large.labels] * 2), (0.8, 0.2, 0.0), 0)
    assert sum(summary["train"].values()) == len(stamp_train) + len(frame_train)
    assert sum(summary["validation"].values()) == len(stamp_val) + len(frame_val)
    code, _, err = run_cli(
        "train", "--detector", "--data", frames, "--frames", frames, "--out", tmp_path / "d"
    )
    assert code != 0 and "--frames is for the classifier" in err
