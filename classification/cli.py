"""Training-side verbs for the classifier: `data`, `tune`, `train --classifier`, `evaluate --classifier`.

Only argparse here; TensorFlow is imported when a handler runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detection import cli as detection_cli
from galaxy_edge.argtypes import number_list, split_fractions


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="classifier: Galaxy10 .h5 (astroNN layout, real or simulated) or a folder of class folders; "
        "detector: a folder of images with labelImg XML (or YOLO txt)",
    )
    parser.add_argument("--scheme", choices=("decals", "sdss"), help="class scheme (default: from the data)")
    parser.add_argument("--size", type=int, default=69, help="model input size; images are resized to it")
    parser.add_argument(
        "--split", type=split_fractions, default=(0.8, 0.1, 0.1), help="train,val,test fractions"
    )
    parser.add_argument("--seed", type=int, default=0)


def register(verbs: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    data = verbs.add_parser(
        "data",
        help="download the official Galaxy10 files (for users who are online)",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge data galaxy10 --variant decals --out data/",
    )
    data.add_argument("dataset", choices=("galaxy10",))
    data.add_argument("--variant", choices=("decals", "sdss"), default="decals")
    data.add_argument("--out", type=Path, default=Path("data"))
    data.set_defaults(handler=run_data)

    tune = verbs.add_parser(
        "tune",
        help="Bayesian search (keras-tuner) of the classifier's shape under a parameter budget",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge tune --data data/sim.h5 --trials 20 --out runs/tune",
    )
    _data_options(tune)
    tune.add_argument("--trials", type=int, default=20)
    tune.add_argument("--epochs", type=int, default=8, help="epochs per trial")
    tune.add_argument("--budget", type=int, default=150_000, help="maximum parameters")
    tune.add_argument("--out", type=Path, required=True, help="tuner folder (an existing one is resumed)")
    tune.set_defaults(handler=run_tune)

    train = verbs.add_parser(
        "train",
        help="train the classifier (--classifier), the detector (--detector) or the detector's "
        "verifier (--verifier) or box refiner (--box-refiner)",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge train --classifier --data data/sim.h5 "
        "--config runs/tune/tuning.json --out runs/classifier\n"
        "  galaxy-edge train --detector --data data/det_train --out runs/detector\n"
        "  galaxy-edge train --detector --data MY_LABELIMG_DIR --from models/galaxy_detector.keras "
        "--out runs/my_detector\n"
        "  galaxy-edge train --verifier --detector-model models/galaxy_detector_int8.tflite "
        "--data data/det_harvest --out runs/verifier\n"
        "  galaxy-edge train --box-refiner --detector-model models/galaxy_detector_int8.tflite "
        "--data data/det_harvest --out runs/box_refiner",
    )
    task = train.add_mutually_exclusive_group(required=True)
    task.add_argument("--classifier", action="store_true", help="train the Galaxy10 classifier")
    task.add_argument("--detector", action="store_true", help="train the SSDLite galaxy detector")
    task.add_argument(
        "--verifier",
        action="store_true",
        help="train a second look at a detector's candidates (--detector-model) on labelImg frames it "
        "never trained on",
    )
    task.add_argument(
        "--box-refiner",
        action="store_true",
        help="train a second look at a detector's boxes (--detector-model): their extent from their own "
        "pixels, on labelImg frames it never trained on",
    )
    _data_options(train)
    detection_cli.add_train_options(train)
    detection_cli.add_verifier_options(train)
    train.add_argument("--config", type=Path, help="hyperparameters: a tuning.json or a classifier.json")
    train.add_argument("--from", dest="initial", type=Path, help="fine-tune from this .keras model")
    train.add_argument("--epochs", type=int, help="default: 30 (classifier), 40 (detector)")
    train.add_argument("--batch-size", type=int, help="default: 64 (classifier), 16 (detector)")
    train.add_argument(
        "--class-weight-power",
        type=float,
        default=0.5,
        help="0: no class weights, 1: inverse frequency; between: partial rebalancing",
    )
    train.add_argument("--no-augment", action="store_true")
    train.add_argument(
        "--gz2-weak",
        nargs="?",
        const="default",
        help="classifier: also train on the weak-training half of the real GZ2 images as weakly labelled "
        "data (spiral or not; default folder ../shared/data/gz2_kaggle_1400); the other half stays "
        "held out for `evaluate --gz2`",
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        help="initial learning rate (default: the configuration's for the classifier; for the "
        "detector 2e-3, or 1e-4 with --from); lower for a second, fine phase with --from",
    )
    train.add_argument(
        "--weak-weight", type=float, default=1.0, help="loss weight of a weakly labelled image"
    )
    train.add_argument(
        "--frames",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="classifier: also train on the galaxies of simulated frames (`simulate frames` folders: "
        "truth.csv), cut as the chain cuts a detection; split with --split's fractions like --data",
    )
    train.add_argument(
        "--frame-min-px",
        type=float,
        default=0.0,
        metavar="PX",
        help="with --frames: leave out galaxies whose box's longer side is under PX (the classifier's "
        "resolution floor: the chain does not classify them)",
    )
    train.add_argument(
        "--frame-repeat",
        type=int,
        default=1,
        help="with --frames: each frame galaxy's copies in the training part (frames hold far fewer "
        "galaxies than a stamp set)",
    )
    train.add_argument(
        "--teacher",
        type=Path,
        help="classifier: distil this .keras model's 8-rotation mean probabilities into the trained "
        "model (soft targets; e.g. the --from model, to carry its rotation ensemble into one view)",
    )
    train.add_argument(
        "--teacher-weight",
        type=float,
        default=0.5,
        help="share of the loss on the teacher's soft targets (the rest on the labels)",
    )
    train.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="classifier: keep an exponential moving average of the weights with this momentum "
        "(e.g. 0.999) and validate and save the averaged model (Polyak averaging)",
    )
    train.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="tf.distribute: mirrored replicates over every local device (GPUs); multiworker trains "
        "on every machine TF_CONFIG names (run the same command on each)",
    )
    train.add_argument("--out", type=Path, required=True)
    train.set_defaults(handler=run_train)

    average = verbs.add_parser(
        "average",
        help="average the weights of models of one architecture (WiSE-FT, model soup)",
        formatter_class=formatter,
        description="Elementwise weighted mean of the weights of .keras models that share an architecture "
        "and a starting point: a model and its fine-tuned descendant (WiSE-FT: the halfway point keeps "
        "most of both models' strengths) or several fine-tunings of one model (a model soup).",
        epilog="example:\n  galaxy-edge average models/galaxy10_classifier.keras "
        "runs/classifier_p5/classifier.keras --out runs/classifier_wise/classifier.keras",
    )
    average.add_argument("models", type=Path, nargs="+", metavar="MODEL", help=".keras models (at least two)")
    average.add_argument(
        "--weights", type=number_list, help="one non-negative weight per model, normalized (default: equal)"
    )
    average.add_argument("--out", type=Path, required=True, help="the averaged .keras model")
    average.set_defaults(handler=run_average)

    evaluate = verbs.add_parser(
        "evaluate",
        help="evaluate the classifier (--classifier): metrics, confusion, calibration, GZ2 spiral check",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge evaluate --classifier --model runs/classifier/classifier.keras "
        "--data data/sim_test.h5 --gz2 --out runs/classifier/eval",
    )
    evaluated = evaluate.add_mutually_exclusive_group(required=True)
    evaluated.add_argument("--classifier", action="store_true")
    evaluated.add_argument("--detector", action="store_true")
    detection_cli.add_evaluate_options(evaluate)
    evaluate.add_argument(
        "--model",
        type=Path,
        nargs="+",
        help=".keras model, or a .tflite with its card (run by the edge runtime); several: a weighted "
        "ensemble (weights fitted on half of --data, reported on the other half)",
    )
    evaluate.add_argument(
        "--kfold", type=int, metavar="K", help="k-fold cross-validation of --configs on --data"
    )
    evaluate.add_argument(
        "--configs",
        type=Path,
        nargs=2,
        metavar=("A", "B"),
        help="two hyperparameter files (tuning.json or classifier.json) to compare with --kfold",
    )
    evaluate.add_argument("--epochs", type=int, default=10, help="training epochs per fold with --kfold")
    evaluate.add_argument("--size", type=int, default=69, help="input size with --kfold")
    evaluate.add_argument("--data", type=Path, help="labelled .h5 or class folders (all of it is evaluated)")
    evaluate.add_argument("--scheme", choices=("decals", "sdss"))
    evaluate.add_argument(
        "--gz2",
        nargs="?",
        const="default",
        help="also run the real GZ2 spiral check (default folder ../shared/data/gz2_kaggle_1400)",
    )
    evaluate.add_argument(
        "--frames",
        type=Path,
        help="also classify the galaxies of simulated frames (a `simulate frames` folder: truth.csv), cut "
        "as the chain cuts them: accuracy by size and S/N, and what the reject option keeps",
    )
    evaluate.add_argument("--rotations", action="store_true", help="also report test-time rotation averaging")
    evaluate.add_argument(
        "--gradcam",
        type=int,
        default=0,
        metavar="N",
        help="save Grad-CAM overlays for N images of --data under OUT/gradcam",
    )
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.set_defaults(handler=run_evaluate)


def _split(args: argparse.Namespace):
    from classification.data import load_dataset, stratified_split

    dataset = load_dataset(args.data, args.size, args.scheme)
    train, validation, test = stratified_split(dataset.labels, args.split, args.seed)
    print(
        f"{args.data}: {len(dataset)} images ({dataset.scheme}), train {len(train)}, val {len(validation)}, "
        f"test {len(test)}",
        file=sys.stderr,
    )
    return dataset, dataset.subset(train), dataset.subset(validation), dataset.subset(test)


def run_data(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from classification.download import download_galaxy10

    with tqdm(unit="B", unit_scale=True, desc=args.variant, file=sys.stderr, mininterval=1) as bar:
        path = download_galaxy10(args.variant, args.out, progress=bar.update)
    print(path)
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from classification.tune import tune_classifier

    _, train, validation, _ = _split(args)
    result = tune_classifier(
        train, validation, args.out, args.trials, args.epochs, args.budget, input_size=args.size
    )
    print(
        f"best val accuracy {result['best_val_accuracy']:.4f} with {result['best_parameters']} parameters: "
        f"{json.dumps(result['best_config'])}"
    )
    print(f"results in {args.out / 'tuning.json'}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    if args.verifier:
        return detection_cli.run_train_verifier(args)
    if args.box_refiner:
        return detection_cli.run_train_box_refiner(args)
    if args.detector:
        if args.frames:
            from galaxy_edge.errors import GalaxyEdgeError

            raise GalaxyEdgeError(
                "--frames is for the classifier: a detector trains on the frames given as --data"
            )
        return detection_cli.run_train(args)
    from classification.evaluate import predict
    from classification.model import CNNConfig
    from classification.train import TrainSettings, distribution_strategy, output_folder, train_classifier
    from galaxy_edge.errors import GalaxyEdgeError

    # A multi-worker strategy must exist before TensorFlow runs anything else in this process.
    strategy = distribution_strategy(args.strategy)
    if args.frame_repeat < 1:
        raise GalaxyEdgeError(f"--frame-repeat {args.frame_repeat}: give at least 1")
    dataset, train, validation, test = _split(args)
    if args.frames:
        train, validation, test = _with_frame_galaxies(args, dataset.scheme, train, validation, test)
    config = CNNConfig(input_size=args.size, num_classes=len(dataset.counts()))
    if args.config:
        values = json.loads(args.config.read_text())
        config = CNNConfig.from_dict(values.get("best_config") or values.get("config") or values)
        config.input_size, config.num_classes = args.size, len(dataset.counts())
    if args.learning_rate:
        config.learning_rate = args.learning_rate
    initial = None
    if args.initial:
        import keras

        if not args.initial.is_file():
            raise GalaxyEdgeError(f"{args.initial}: no such model")
        with strategy.scope():
            initial = keras.models.load_model(args.initial)
    teacher = None
    if args.teacher:
        import keras

        if not args.teacher.is_file():
            raise GalaxyEdgeError(f"{args.teacher}: no such teacher model")
        if not 0.0 < args.teacher_weight <= 1.0:
            raise GalaxyEdgeError(f"--teacher-weight {args.teacher_weight}: give a share in (0, 1]")
        teacher = keras.models.load_model(args.teacher, compile=False)
    settings = TrainSettings(
        epochs=args.epochs or 30,
        batch_size=args.batch_size or 64,
        seed=args.seed,
        class_weight_power=args.class_weight_power,
        augment=not args.no_augment,
        strategy=args.strategy,
        weak_weight=args.weak_weight,
        teacher=str(args.teacher or ""),
        teacher_weight=args.teacher_weight if args.teacher else 0.0,
        ema=args.ema,
    )
    weak = _weak_set(args, dataset)
    # With --from, the model it starts from is scored on the same held-out part first (training
    # changes it in place), so the user sees whether fine-tuning on their data helped.
    start = None
    if initial is not None and len(test):
        start = _test_figures(predict(initial, test.images), test, dataset.scheme)
    model = train_classifier(train, validation, config, settings, args.out, initial, weak, teacher)
    summary_path = output_folder(args.out, args.strategy) / "classifier.json"
    if not len(test):  # --split with no test part: the held-out set lives elsewhere
        print(f"no test part in --split; model {summary_path.with_suffix('.keras')}")
        return 0
    summary = json.loads(summary_path.read_text())
    summary["test"] = _test_figures(predict(model, test.images), test, dataset.scheme)
    if start is not None:
        summary["test_start"] = {"model": str(args.initial), **start}
    summary_path.write_text(json.dumps(summary, indent=1))
    accuracy, count = summary["test"]["accuracy"], summary["test"]["count"]
    model_path = summary_path.with_suffix(".keras")
    print(f"test accuracy {accuracy:.4f} on {count} held-out images; model {model_path}")
    if start is not None:
        print(f"the same images with {args.initial}, the model it started from: {start['accuracy']:.4f}")
        if accuracy < start["accuracy"]:
            print(
                f"warning: the trained classifier scores lower on the held-out images than {args.initial}",
                file=sys.stderr,
            )
    return 0


def _test_figures(probabilities, test, scheme: str) -> dict:
    from classification.evaluate import classification_metrics

    metrics = classification_metrics(probabilities, test.labels, scheme)
    return {k: metrics[k] for k in ("accuracy", "count", "macro_roc_auc")}


def _with_frame_galaxies(args: argparse.Namespace, scheme: str, train, validation, test):
    """Each part joined by its share of the frame galaxies (the training share --frame-repeat times)."""
    from classification.data import frame_galaxies, join, stratified_split

    galaxies = join([frame_galaxies(folder, args.size, scheme, args.frame_min_px) for folder in args.frames])
    parts = [galaxies.subset(p) for p in stratified_split(galaxies.labels, args.split, args.seed)]
    floor = f" of {args.frame_min_px:g} pixels or more" if args.frame_min_px else ""
    print(
        f"{' '.join(map(str, args.frames))}: {len(galaxies)} frame galaxies{floor}, "
        f"train {len(parts[0])} x {args.frame_repeat}, "
        f"val {len(parts[1])}, test {len(parts[2])}",
        file=sys.stderr,
    )
    return (
        join([train] + [parts[0]] * args.frame_repeat),
        join([validation, parts[1]]),
        join([test, parts[2]]),
    )


def run_average(args: argparse.Namespace) -> int:
    from classification.average import save_average

    out = save_average(args.models, args.out, args.weights)
    print(f"averaged {len(args.models)} models into {out} (summary {out.with_suffix('.json')})")
    return 0


def _weak_set(args: argparse.Namespace, dataset):
    """GZ2 weak-training half as allowed-class masks: spiral -> any spiral class, else any other."""
    if not args.gz2_weak:
        return None
    import numpy as np

    from classification.train import WeakSet
    from galaxy_edge.gz2 import DEFAULT_GZ2_DIR, load_gz2, weak_training_half
    from galaxy_edge.schemes import get_scheme

    folder = DEFAULT_GZ2_DIR if args.gz2_weak == "default" else Path(args.gz2_weak)
    gz2 = load_gz2(folder, size=args.size)
    half = weak_training_half(gz2.galaxy_ids)
    scheme = get_scheme(dataset.scheme)
    spiral_mask = np.zeros(scheme.num_classes, np.float32)
    spiral_mask[list(scheme.spiral_indices)] = 1.0
    allowed = np.where(gz2.spiral[half, None] == 1, spiral_mask, 1.0 - spiral_mask)
    print(
        f"{folder}: {half.sum()} GZ2 images as weak labels ({int(gz2.spiral[half].sum())} spiral), "
        f"{(~half).sum()} held out",
        file=sys.stderr,
    )
    return WeakSet(gz2.images[half], allowed, f"{folder} (weak-training half)")


def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from classification.data import load_dataset
    from classification.evaluate import (
        classification_metrics,
        load_classifier,
        predict,
        save_plots,
        spiral_check,
        write_report,
    )
    from galaxy_edge.errors import GalaxyEdgeError
    from galaxy_edge.gz2 import DEFAULT_GZ2_DIR, load_gz2, weak_training_half

    if args.detector:
        return detection_cli.run_evaluate(args)
    if args.kfold:
        return _run_kfold(args)
    if not args.model:
        raise GalaxyEdgeError("give --model (one, or several for an ensemble), or --kfold with --configs")
    for path in args.model:
        if not path.is_file():
            raise GalaxyEdgeError(f"{path}: no such model")
    models = [load_classifier(path) for path in args.model]
    if args.gradcam and any(path.suffix == ".tflite" for path in args.model):
        raise GalaxyEdgeError("--gradcam needs the .keras model (a .tflite gives no gradients)")
    model = models[0]
    size = int(model.input_shape[1])
    scheme = args.scheme
    report: dict = {"model": [str(p) for p in args.model]}
    if args.data:
        dataset = load_dataset(args.data, size, scheme)
        scheme = dataset.scheme
        if len(models) > 1:
            model, dataset, report["ensemble"] = _fit_ensemble(models, dataset)
        metrics = classification_metrics(predict(model, dataset.images), dataset.labels, scheme)
        report["data"] = {"source": str(args.data), **metrics}
        args.out.mkdir(parents=True, exist_ok=True)
        save_plots(metrics, scheme, args.out)
        print(
            f"accuracy {metrics['accuracy']:.4f}, macro ROC-AUC {metrics['macro_roc_auc']}, "
            f"ECE {metrics['expected_calibration_error']:.4f} on {metrics['count']} images"
        )
        if metrics["by_part"]:
            parts = metrics["by_part"]
            print(
                f"  on {parts['parts']} disjoint stratified parts of {parts['part_size']}: accuracy "
                f"{parts['min']:.4f} to {parts['max']:.4f}; 95 % interval of the whole "
                f"{parts['interval_95'][0]:.4f}-{parts['interval_95'][1]:.4f}"
            )
        if args.rotations:
            rotated = classification_metrics(
                predict(model, dataset.images, rotations=True), dataset.labels, scheme
            )
            report["data_rotations"] = {
                "accuracy": rotated["accuracy"],
                "gain": rotated["accuracy"] - metrics["accuracy"],
                "cost": "8 invokes per crop",
            }
            print(
                f"with 8 rotations and flips: accuracy {rotated['accuracy']:.4f} "
                f"({rotated['accuracy'] - metrics['accuracy']:+.4f}) at 8x the cost"
            )
    if args.gradcam and args.data:
        from classification.gradcam import save_gradcams
        from galaxy_edge.schemes import get_scheme

        chosen = np.random.default_rng(0).permutation(len(dataset))[: args.gradcam]
        saved = save_gradcams(
            model,
            dataset.images[chosen],
            dataset.labels[chosen],
            list(get_scheme(scheme).names),
            args.out / "gradcam",
        )
        print(f"{len(saved)} Grad-CAM overlays in {args.out / 'gradcam'}")
    if args.frames:
        _frames_check(model, args.frames, size, scheme or "decals", report)
    if args.gz2:
        folder = DEFAULT_GZ2_DIR if args.gz2 == "default" else Path(args.gz2)
        gz2 = load_gz2(folder, size=size)
        probabilities = predict(model, gz2.images)
        held_out = ~weak_training_half(gz2.galaxy_ids)
        # The held-out half is the figure to quote: `train --gz2-weak` may have seen the other.
        check = spiral_check(probabilities[held_out], gz2.spiral[held_out], scheme or "decals")
        check["images"] = "held-out half (never used by train --gz2-weak)"
        check["all_images_roc_auc"] = spiral_check(probabilities, gz2.spiral, scheme or "decals")["roc_auc"]
        report["gz2_spiral_check"] = check
        print(
            f"real GZ2 spiral check (held-out half): ROC-AUC {check['roc_auc']:.4f}, "
            f"accuracy {check['best_accuracy']:.4f} at "
            f"threshold {check['best_threshold']:.2f} ({check['count']} images)"
        )
        if args.rotations:  # what `galaxy-edge run --rotations` would answer
            rotated = predict(model, gz2.images[held_out], rotations=True)
            check["rotations"] = spiral_check(rotated, gz2.spiral[held_out], scheme or "decals")
            print(f"  with the 8 rotations and flips: ROC-AUC {check['rotations']['roc_auc']:.4f}")
    path = write_report(report, args.out)
    print(f"report in {path}")
    return 0


def _frames_check(model, folder: Path, size: int, scheme: str, report: dict) -> None:
    from classification.data import frame_galaxy_crops
    from classification.evaluate import frame_check, predict

    images, names, sides, snrs = frame_galaxy_crops(folder, size)
    # A .tflite's card may carry the floor the chain applies: report what it does on these frames.
    applied = getattr(model, "resolution_floor_px", None)
    check = frame_check(predict(model, images), names, sides, snrs, scheme, floor_px=applied)
    report["frames"] = {"source": str(folder), **check}
    kept_accuracy = "none" if check["kept_accuracy"] is None else f"{check['kept_accuracy']:.3f}"
    print(
        f"frame galaxies ({folder}): accuracy {check['accuracy']:.3f} on {check['count']}; the reject "
        f"option (top probability {check['reject_threshold']}) keeps {check['kept']:.2f}, "
        f"accuracy of those {kept_accuracy}"
    )
    for name, table in (("box size, px", check["by_size_px"]), ("S/N", check["by_snr"])):
        print(
            f"  by {name}: "
            + ", ".join(f"{row['range']} {row['accuracy']:.2f} ({row['count']})" for row in table)
        )
    resolution = check["resolution"]
    print("  resolution floor (accuracy, Wilson 95 % interval, a constant answer's score, galaxies):")
    for row in resolution["by_size_px"]:
        low, high = row["interval_95"]
        mark = "informative" if row["informative"] else "no better than a constant answer"
        print(
            f"    {row['range']:>8} px: {row['accuracy']:.3f} ({low:.3f}-{high:.3f}) against "
            f"{row['constant_answer']:.3f}, {row['count']}: {mark}"
        )
    floor = resolution["floor_px"]
    print(
        f"  labels carry information from {floor:g} px up"
        if floor is not None
        else "  no size is informative"
    )
    for side in ("under", "over"):
        row = resolution.get(side)
        if row:
            low, high = row["interval_95"]
            print(
                f"  {side} the floor in use ({resolution['applied_px']:g} px): {row['accuracy']:.3f} "
                f"({low:.3f}-{high:.3f}) against a constant answer's {row['constant_answer']:.3f}, "
                f"{row['count']} galaxies"
            )


class _Ensemble:
    """Weighted mean of several models' probabilities, with the predict() the evaluation uses."""

    def __init__(self, models, weights) -> None:
        self.models, self.weights = models, weights
        self.input_shape, self.output_shape = models[0].input_shape, models[0].output_shape

    def predict(self, images, batch_size=256, verbose=0):
        from classification.compare import ensemble

        return ensemble(
            [m.predict(images, batch_size=batch_size, verbose=verbose) for m in self.models], self.weights
        )


def _fit_ensemble(models, dataset):
    import numpy as np

    from classification.compare import fit_ensemble_weights

    order = np.random.default_rng(0).permutation(len(dataset))
    fit, held = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    probabilities = [m.predict(dataset.images[fit], batch_size=256, verbose=0) for m in models]
    weights = fit_ensemble_weights(probabilities, dataset.labels[fit])
    singles = [
        float((m.predict(dataset.images[held], verbose=0).argmax(1) == dataset.labels[held]).mean())
        for m in models
    ]
    print(
        f"ensemble weights {np.round(weights, 3).tolist()} (fitted on {len(fit)} images); single-model "
        f"accuracies on the other {len(held)}: {np.round(singles, 4).tolist()}"
    )
    info = {"weights": weights.tolist(), "fitted_on": len(fit), "single_accuracies": singles}
    return _Ensemble(models, weights), dataset.subset(held), info


def _run_kfold(args: argparse.Namespace) -> int:
    from classification.compare import cross_validate
    from classification.data import load_dataset
    from classification.evaluate import write_report
    from classification.model import CNNConfig
    from classification.train import TrainSettings
    from galaxy_edge.errors import GalaxyEdgeError

    if not args.data or not args.configs:
        raise GalaxyEdgeError("--kfold needs --data and --configs A B")
    dataset = load_dataset(args.data, args.size, args.scheme)
    configs = {}
    for path in args.configs:
        values = json.loads(path.read_text())
        config = CNNConfig.from_dict(values.get("best_config") or values.get("config") or values)
        config.input_size, config.num_classes = args.size, len(dataset.counts())
        configs[path.stem if path.stem not in configs else str(path)] = config
    settings = TrainSettings(epochs=args.epochs, verbose=0)
    result = cross_validate(
        dataset,
        configs,
        args.kfold,
        settings,
        args.out / "folds",
        progress=lambda f, n, a: print(f"fold {f}: {n} accuracy {a:.4f}", file=sys.stderr),
    )
    for name in configs:
        mean, spread = result["mean"][name], result["std"][name]
        print(f"{name}: accuracy {mean:.4f} +- {spread:.4f} over {args.kfold} folds")
    if "wilcoxon" in result:
        print(f"Wilcoxon signed-rank p = {result['wilcoxon']['p_value']:.4f} ({result['wilcoxon']['note']})")
    print(f"report in {write_report({'kfold': result}, args.out)}")
    return 0
