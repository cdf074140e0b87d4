"""`galaxy-edge export MODEL.keras --to float32|float16|int8`: TFLite, model card, reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from galaxy_edge.argtypes import level_strides, width_height


def register(verbs: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    export = verbs.add_parser(
        "export",
        help="convert a trained Keras classifier to TFLite (int8 for the Pi and Coral) with its model card",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge export runs/classifier/classifier.keras --to int8 --data data/sim.h5 "
        "--out models/galaxy10_classifier_int8.tflite",
    )
    export.add_argument("model", type=Path, help="a .keras model from `galaxy-edge train`")
    export.add_argument("--to", choices=("float32", "float16", "int8"), default="int8")
    export.add_argument(
        "--data",
        type=Path,
        help="classifier: labelled .h5 or class folders; detector: a labelImg folder of frames; "
        "calibration images for int8 and the parity check (a verifier brings its own: not needed)",
    )
    export.add_argument("--scheme", choices=("decals", "sdss"))
    export.add_argument(
        "--calibration-data",
        type=Path,
        help="int8 calibration images from the training data (same kinds as --data; default: --data), "
        "so that --data can be held out for the parity check",
    )
    export.add_argument("--calibration-count", type=int, default=300, help="representative images for int8")
    export.add_argument(
        "--parity-count",
        type=int,
        default=2000,
        help="images (classifier) or frames (detector) for the float/int8 parity report",
    )
    export.add_argument(
        "--score-threshold", type=float, default=0.35, help="detector: default score threshold in the card"
    )
    export.add_argument(
        "--frame-size",
        type=width_height,
        help="detector: export for whole camera frames of WxH (one invoke at native scale instead of "
        "overlapping tiles), e.g. 1280x720",
    )
    export.add_argument(
        "--frame-strides",
        type=level_strides,
        metavar="S,S",
        help="with --frame-size: keep only the feature levels of these strides (a prefix of the trained "
        "ones, say 8,16); the overview pass beside the twin then finds the larger galaxies",
    )
    export.add_argument(
        "--postprocess",
        action="store_true",
        help="detector: int8 with the TFLite_Detection_PostProcess op in the graph (float outputs: boxes, "
        "classes, scores, count) for tools that expect that layout; decoding otherwise happens in edge/",
    )
    export.add_argument(
        "--detector",
        type=Path,
        help="verifier, box refiner, or detector exported with --frame-size: the (tiled) detector .tflite "
        "whose card is to name this one (same folder); its verifier and box refiner then serve the "
        "whole-frame twin too",
    )
    export.add_argument(
        "--psf-calibration",
        type=Path,
        metavar="FRAMES",
        help="verifier: fit the re-scoring with each frame's PSF width and each candidate's concentration "
        "(edge.psf) on this labelImg folder of frames it never trained on, candidates from --detector",
    )
    export.add_argument(
        "--out", type=Path, required=True, help="the .tflite to write (card and report beside it)"
    )
    export.set_defaults(handler=run_export)


def calibration_source(args: argparse.Namespace) -> Path:
    return args.calibration_data or args.data


def run_export(args: argparse.Namespace) -> int:
    from detection.box_refiner import is_box_refiner
    from detection.verifier import is_verifier
    from export.detector import is_detector
    from galaxy_edge.errors import GalaxyEdgeError

    if is_verifier(args.model):
        return run_export_verifier(args)
    if is_box_refiner(args.model):
        return run_export_box_refiner(args)
    if args.psf_calibration is not None:
        raise GalaxyEdgeError(f"{args.model}: --psf-calibration is for a verifier (train --verifier)")
    if args.data is None:
        raise GalaxyEdgeError("--data is needed to export a classifier or a detector")
    if is_detector(args.model):
        return run_export_detector(args)
    import keras
    import numpy as np

    from classification.data import load_dataset
    from export.card import write_classifier_card
    from export.reports import classifier_parity, edgetpu_readiness, write_report
    from export.tflite import convert

    if not args.model.is_file():
        raise GalaxyEdgeError(f"{args.model}: no such model")
    if args.frame_size or args.frame_strides:
        raise GalaxyEdgeError(
            "--frame-size and --frame-strides are for detectors (a classifier sees one crop)"
        )
    model = keras.models.load_model(args.model)
    size = int(model.input_shape[1])
    data = load_dataset(args.data, size, args.scheme)
    calibration = (
        data
        if calibration_source(args) == args.data
        else load_dataset(args.calibration_data, size, args.scheme)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(convert(model, args.to, calibration.images, args.calibration_count))
    summary_path = args.model.with_suffix(".json")
    training = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    training.pop("history", None)
    extra = {"calibration": {"count": args.calibration_count, "source": str(calibration_source(args))}}
    # The runtime that the parity check drives reads the card, so it is written first, then
    # again with the measured metrics.
    write_classifier_card(args.out, data.scheme, training=training, extra=extra)
    chosen = np.random.default_rng(1).permutation(len(data))[: args.parity_count]
    parity = classifier_parity(model, args.out, data.images[chosen], data.labels[chosen], data.scheme)
    readiness = edgetpu_readiness(args.out) if args.to == "int8" else None
    metrics = {
        "float32_accuracy": parity["float_accuracy"],
        f"{args.to}_accuracy": parity["int8_accuracy"],
        "top1_agreement": parity["top1_agreement"],
        "evaluated_on": str(args.data),
        "evaluated_count": parity["count"],
    }
    card = write_classifier_card(args.out, data.scheme, training=training, metrics=metrics, extra=extra)
    report_json, report_md = write_report(
        {"model": str(args.out), "parity": parity, "edgetpu": readiness},
        args.out.with_name(args.out.stem + "_report.json"),
    )
    size_kb = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({size_kb:.0f} KB) and {card}")
    print(
        f"float accuracy {parity['float_accuracy']:.4f}, {args.to} accuracy {parity['int8_accuracy']:.4f}, "
        f"top-1 agreement {parity['top1_agreement']:.4f} on {parity['count']} images"
    )
    _print_readiness(readiness, report_json, report_md)
    return 0


def run_export_detector(args: argparse.Namespace) -> int:
    import tempfile

    from export.detector import (
        FINE_TWIN_OVERVIEW_SHRINK,
        attach_frame_model,
        detector_parity,
        detector_summary,
        export_detector,
        export_postprocess_variant,
        parity_metrics,
        write_detector_card,
    )
    from export.reports import edgetpu_readiness, write_report
    from galaxy_edge.errors import GalaxyEdgeError

    summary = detector_summary(args.model)
    frame_size = args.frame_size[::-1] if args.frame_size else None  # (height, width)
    if args.detector is not None and frame_size is None:
        raise GalaxyEdgeError("--detector with a detector: only a whole-frame twin (--frame-size) attaches")
    if args.frame_strides and frame_size is None:
        raise GalaxyEdgeError("--frame-strides goes with --frame-size")
    if args.postprocess:
        if args.to != "int8":
            raise GalaxyEdgeError("--postprocess goes with --to int8")
        if args.frame_size:
            raise GalaxyEdgeError("--postprocess exports the tile-sized detector; leave out --frame-size")
        export_postprocess_variant(
            args.model, args.out, calibration_source(args), args.calibration_count, args.score_threshold
        )
    else:
        export_detector(
            args.model,
            args.out,
            args.to,
            calibration_source(args),
            args.calibration_count,
            args.score_threshold,
            frame_size,
            args.frame_strides,
        )
    with tempfile.TemporaryDirectory() as workdir:
        compared = {args.to: args.out}
        if args.to != "float32":
            compared["float32"] = Path(workdir) / "float32.tflite"
            export_detector(
                args.model,
                compared["float32"],
                "float32",
                frame_size=frame_size,
                frame_strides=args.frame_strides,
            )
        parity = detector_parity(compared, args.data, args.parity_count, summary["config"]["labels"])
    # The custom post-processing op runs on the CPU: such a model is not for the Edge TPU whole.
    readiness = edgetpu_readiness(args.out) if args.to == "int8" and not args.postprocess else None
    metrics = parity_metrics(parity, args.data)
    card = args.out.with_suffix(".json")
    if args.postprocess:  # keep the post-processing card, add the metrics
        values = json.loads(card.read_text())
        values["metrics"] = metrics
        card.write_text(json.dumps(values, indent=1))
    else:
        card = write_detector_card(
            args.out,
            summary,
            args.score_threshold,
            metrics=metrics,
            extra={"calibration": {"count": args.calibration_count, "source": str(calibration_source(args))}},
            frame_size=frame_size,
            frame_strides=args.frame_strides,
        )
    report_json, report_md = write_report(
        {"model": str(args.out), "parity": parity, "edgetpu": readiness},
        args.out.with_name(args.out.stem + "_report.json"),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB) and {card}")
    if args.detector is not None:
        width, height = args.frame_size
        print(f"{attach_frame_model(args.detector, args.out)} names it for frames of {width}x{height}")
        if args.frame_strides:
            small = f"{width // FINE_TWIN_OVERVIEW_SHRINK}x{height // FINE_TWIN_OVERVIEW_SHRINK}"
            print(
                f"its overview runs the frame shrunk {FINE_TWIN_OVERVIEW_SHRINK} times: export the twin for "
                f"{small} too (--frame-size {small} --detector {args.detector}), or the overview is tiled"
            )
    print(
        "; ".join(
            f"{name}: mAP@0.5 {parity[name]['map50']:.4f}, mAP@0.5:0.95 {parity[name]['map']:.4f}"
            for name in compared
        )
        + f" on {parity['frames']} frames"
    )
    _print_readiness(readiness, report_json, report_md)
    return 0


def run_export_verifier(args: argparse.Namespace) -> int:
    from export.reports import edgetpu_readiness
    from export.verifier import export_verifier

    parity = export_verifier(
        args.model,
        args.out,
        args.to,
        args.score_threshold,
        args.calibration_count,
        args.detector,
        args.psf_calibration,
    )
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB): validation AUC float32 "
        f"{parity['float32_auc']:.4f}, {args.to} {parity[args.to + '_auc']:.4f}, largest probability "
        f"difference {parity['max_probability_difference']:.3f} on {parity['candidates']} candidates"
    )
    if "psf_calibration" in parity:
        fit = parity["psf_calibration"]
        print(
            f"PSF calibration on {fit['candidates']} candidates ({fit['galaxies']} galaxies; PSF measured on "
            f"{fit['frames_with_psf']} frames): AUC {fit['auc_verifier']:.4f} -> {fit['auc_calibrated']:.4f}"
        )
    if args.detector:
        print(f"{args.detector}'s card now names {args.out.name}")
    if args.to == "int8":
        _print_readiness(edgetpu_readiness(args.out))
    return 0


def run_export_box_refiner(args: argparse.Namespace) -> int:
    from export.box_refiner import export_box_refiner
    from export.reports import edgetpu_readiness

    parity = export_box_refiner(args.model, args.out, args.to, args.calibration_count, args.detector)
    exported, reference = parity[args.to], parity["float32"]
    size_kb = args.out.stat().st_size / 1024
    print(
        f"wrote {args.out} ({size_kb:.0f} KB): on {exported['boxes']} validation boxes, mean IoU with "
        f"the galaxies' {exported['mean_iou'][0]:.3f} -> float32 {reference['mean_iou'][1]:.3f}, "
        f"{args.to} {exported['mean_iou'][1]:.3f}; at IoU 0.5 {exported['share_iou_0.5'][0]:.3f} -> "
        f"{reference['share_iou_0.5'][1]:.3f}, {exported['share_iou_0.5'][1]:.3f}"
    )
    if args.detector:
        print(f"{args.detector}'s card now names {args.out.name}")
    if args.to == "int8":
        _print_readiness(edgetpu_readiness(args.out))
    return 0


def _print_readiness(
    readiness: dict | None, report_json: Path | None = None, report_md: Path | None = None
) -> None:
    if readiness is not None:
        print(
            f"Edge TPU ready: {'yes' if readiness['ready'] else 'no'}"
            + "".join(f"\n  {p}" for p in readiness["problems"])
        )
    if report_json is not None:
        print(f"report: {report_json}, {report_md}")
