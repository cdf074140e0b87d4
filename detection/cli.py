"""Detector options and handlers of `galaxy-edge train --detector` and `evaluate --detector`.

The verbs themselves are registered in classification/cli.py (one `train`, one `evaluate`);
only argparse here, TensorFlow is imported when a handler runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detection.centred import TRAIN_SHRINKS
from detection.verifier import VERIFIER_STEMS
from galaxy_edge.argtypes import level_strides, number_list


def add_train_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detector options (--detector)")
    group.add_argument("--val", type=Path, help="labelImg folder for validation (default: split from --data)")
    group.add_argument(
        "--labels",
        default="galaxy",
        help="comma-separated box labels to detect; with --from, labels the model has keep its scores "
        "and the others start anew",
    )
    group.add_argument("--input-size", type=int, default=320, help="detector input side in pixels")
    group.add_argument(
        "--fpn",
        action="store_true",
        help="a top-down pathway (FPN) into the fine levels; with --from, added to the model's network",
    )
    group.add_argument("--backbone", choices=("mobilenet_v2", "mobilenet_v3_small"), default="mobilenet_v2")
    group.add_argument("--alpha", type=float, default=0.35, help="backbone width multiplier")
    group.add_argument(
        "--stem",
        choices=("backbone", "patchify"),
        help="backbone: the backbone's own first layers (default for a new model); patchify: a cheaper "
        "stem to stride 8 (about 30 %% fewer instructions per invoke for MobileNetV3Small); with --from, "
        "the new stem is first fitted to the given model's features (--stem-steps batches)",
    )
    group.add_argument(
        "--stem-steps",
        type=int,
        default=3000,
        help="with --from and a new --stem: batches of 32 crops that fit it to the model's features",
    )
    group.add_argument(
        "--head-channels", type=int, default=96, help="channels of the separable box and class heads"
    )
    group.add_argument(
        "--strides",
        type=level_strides,
        help="feature levels' strides, e.g. 4,8,16,32,64 (default 8,16,32,64); with --from, a model "
        "with other levels starts from its weights (backbone, and the heads of the strides it has)",
    )
    group.add_argument("--weights", type=Path, help="local ImageNet weights file for the backbone (optional)")
    group.add_argument("--steps-per-epoch", type=int, default=200)
    group.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that augment and encode batches (a GPU run needs about a dozen; default 0: "
        "one stream inside the training process)",
    )
    group.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="train for about this long: the cosine schedule's length is fitted to the measured pace "
        "after every epoch (--epochs becomes a cap); a resumed run gets the whole budget again",
    )
    group.add_argument(
        "--keep-expansions",
        type=float,
        metavar="FRACTION",
        help="with --from: prune the model first, keeping this fraction of the expansion channels of "
        "its inverted-residual blocks (the most important on training crops), then fine-tune",
    )
    group.add_argument(
        "--prune-min-stride",
        type=int,
        default=16,
        help="with --keep-expansions: prune only blocks at this stride or coarser (default 16: the "
        "high-resolution blocks that small galaxies need keep their width)",
    )
    group.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="with --from: train the heads only (a few dozen frames of a new camera)",
    )


def add_verifier_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verifier and box refiner options (--verifier, --box-refiner)")
    group.add_argument(
        "--detector-model",
        type=Path,
        help="the detector .tflite whose candidates the verifier re-scores (or whose boxes the box "
        "refiner refines)",
    )
    group.add_argument(
        "--max-side",
        type=float,
        help="candidates whose longer side reaches this many pixels keep the detector's score (default "
        "32), or its box (--box-refiner, default 64)",
    )
    group.add_argument(
        "--candidate-threshold",
        type=float,
        default=0.25,
        help="the detector's scores that the runtime verifies (lower: more candidates, more cost)",
    )
    group.add_argument(
        "--shift-pixels",
        type=int,
        default=0,
        help="training moves each candidate's patch by up to this many pixels each way (default: none)",
    )
    group.add_argument(
        "--verifier-stem",
        choices=VERIFIER_STEMS,
        default="stride2",
        help="the verifier's first convolution: in 2-pixel steps (default, as shipped: about half the "
        "instructions an invoke) or at the patch's resolution (full)",
    )
    group.add_argument(
        "--no-sky-proposals",
        action="store_true",
        help="train on the detector's candidates only, without the small sources found by thresholding "
        "(edge.proposals); the exported card then leaves them off",
    )
    group.add_argument(
        "--centred-galaxies",
        type=Path,
        help="real images each centred on a galaxy (the GZ2 folder): their training part, shrunk into "
        "mosaics, adds real galaxies to the simulated candidates (detection/centred.py)",
    )
    group.add_argument(
        "--centred-shrinks",
        type=number_list,
        default=TRAIN_SHRINKS,
        help="how many times the centred images are shrunk, comma-separated (default: %(default)s)",
    )


def run_train_verifier(args: argparse.Namespace) -> int:
    from detection.verifier import VerifierConfig, train_verifier
    from galaxy_edge.errors import GalaxyEdgeError

    if args.detector_model is None:
        raise GalaxyEdgeError("--verifier needs --detector-model DETECTOR.tflite")
    if args.data is None:
        raise GalaxyEdgeError("--verifier needs --data: labelImg frames the detector never trained on")
    if args.shift_pixels < 0:
        raise GalaxyEdgeError(f"--shift-pixels {args.shift_pixels}: give 0 or more pixels")
    if any(shrink <= 0 for shrink in args.centred_shrinks):  # before the long harvest, not after it
        raise GalaxyEdgeError(f"--centred-shrinks {args.centred_shrinks}: give factors over 0")
    summary = train_verifier(
        args.detector_model,
        args.data,
        args.out,
        epochs=args.epochs or 8,
        batch_size=args.batch_size or 256,
        config=VerifierConfig(
            max_side=args.max_side or 32.0,
            candidate_threshold=args.candidate_threshold,
            shift=args.shift_pixels,
            stem=args.verifier_stem,
            **({"sky_proposals": None} if args.no_sky_proposals else {}),
        ),
        centred_galaxies=args.centred_galaxies,
        centred_shrinks=args.centred_shrinks,
    )
    validation = summary["validation"]
    print(
        f"wrote {args.out / 'verifier.keras'}: validation AUC {validation['auc']:.4f} "
        f"(the detector's score alone {validation['detector_auc']:.4f}) on {validation['candidates']} "
        "candidates"
    )
    return 0


def run_train_box_refiner(args: argparse.Namespace) -> int:
    from detection.box_refiner import BoxRefinerConfig, train_box_refiner
    from galaxy_edge.errors import GalaxyEdgeError

    if args.detector_model is None:
        raise GalaxyEdgeError("--box-refiner needs --detector-model DETECTOR.tflite")
    if args.data is None:
        raise GalaxyEdgeError("--box-refiner needs --data: labelImg frames the detector never trained on")
    summary = train_box_refiner(
        args.detector_model,
        args.data,
        args.out,
        epochs=args.epochs or 40,
        batch_size=args.batch_size or 256,
        config=BoxRefinerConfig(max_side=args.max_side or 64.0, candidate_threshold=args.candidate_threshold),
        initial=args.initial,
        learning_rate=args.learning_rate,
    )
    gain = summary["validation"]
    print(
        f"wrote {args.out / 'box_refiner.keras'}: on {gain['boxes']} validation boxes, mean IoU with the "
        f"galaxies' boxes {gain['mean_iou'][0]:.3f} -> {gain['mean_iou'][1]:.3f}, at IoU 0.5 "
        f"{gain['share_iou_0.5'][0]:.3f} -> {gain['share_iou_0.5'][1]:.3f}"
    )
    return 0


def add_evaluate_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detector options (--detector)")
    group.add_argument(
        "--sky-frame",
        type=Path,
        action="append",
        default=[],
        help="a real frame (no annotations) to draw the detections on, for a person to judge",
    )
    group.add_argument("--score-threshold", type=float, help="default: the model card's")
    group.add_argument("--draw", type=int, default=6, help="draw misses and false positives of N frames")
    group.add_argument(
        "--no-verifier",
        dest="verify",
        action="store_false",
        help="leave out the verifier that the detector's card names: the detector's own scores",
    )
    group.add_argument(
        "--box-refiner",
        type=Path,
        metavar="FILE",
        help="refine the detector's boxes with this box refiner .tflite (train --box-refiner, or the "
        "optional models/galaxy_box_refiner_int8.tflite), in place of any its card names",
    )
    group.add_argument(
        "--frame-model",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a whole-frame twin of the detector (export M.keras --frame-size WxH): frames of its size "
        "run through it in one invoke instead of tiles (repeatable)",
    )


def _pairs(folder: Path):
    from annotations.dataset import usable_pairs

    return usable_pairs(folder)


def run_train(args: argparse.Namespace) -> int:
    import keras

    from annotations.split import split_pairs
    from detection.anchors import DEFAULT_STRIDES
    from detection.data import load_frames
    from detection.model import DetectorConfig
    from detection.train import DetectorTrainSettings, anchors_for, train_detector
    from galaxy_edge.errors import GalaxyEdgeError

    if args.time_budget is not None and args.time_budget <= 0:
        raise GalaxyEdgeError(f"--time-budget {args.time_budget}: give a positive number of seconds")
    if args.keep_expansions is not None and not args.initial:
        raise GalaxyEdgeError("--keep-expansions prunes a trained model: give it with --from MODEL.keras")
    if args.keep_expansions is not None and not 0.0 < args.keep_expansions <= 1.0:
        raise GalaxyEdgeError(f"--keep-expansions {args.keep_expansions}: give a fraction in (0, 1]")
    if args.workers < 0:
        raise GalaxyEdgeError(f"--workers {args.workers}: give 0 (none) or more")
    labels = [name.strip() for name in args.labels.split(",") if name.strip()]
    pairs = _pairs(args.data)
    if args.val:
        train_pairs, val_pairs = pairs, _pairs(args.val)
    else:
        split = split_pairs(pairs, args.split, args.seed)
        chosen = {name: set(files) for name, files in split.files.items()}
        train_pairs = [p for p in pairs if p[0] in chosen["train"]]
        val_pairs = [p for p in pairs if p[0] in chosen["val"]]
        if not val_pairs:
            val_pairs = train_pairs[-1:]
    # Without a validation part the last training frame stands in: no fair comparison with the start.
    held_out_validation = not {p[0] for p in val_pairs} & {p[0] for p in train_pairs}
    print(f"{args.data}: {len(train_pairs)} training frames, {len(val_pairs)} validation", file=sys.stderr)
    train_frames, val_frames = load_frames(train_pairs, labels), load_frames(val_pairs, labels)
    initial, same_labels = None, False
    if args.initial:
        if not args.initial.is_file():
            raise GalaxyEdgeError(f"{args.initial}: no such model")
        summary_path = args.initial.with_suffix(".json")
        if not summary_path.is_file():
            raise GalaxyEdgeError(f"{summary_path}: the detector's summary (anchors) is missing")
        config = DetectorConfig.from_dict(json.loads(summary_path.read_text())["config"])
        same_labels = config.labels == labels
        initial = keras.models.load_model(args.initial, compile=False)
        if config.labels != labels:
            initial, config = _with_labels(initial, config, labels)
        if args.strides and tuple(args.strides) != tuple(config.anchors.strides):
            initial, config = _with_strides(initial, config, train_frames, args.strides)
        if args.fpn and not config.fpn:
            initial, config = _with_fpn(initial, config)
        if args.keep_expansions is not None:
            initial, config = _pruned(
                initial, config, train_frames, args.keep_expansions, args.prune_min_stride
            )
        if args.stem and args.stem != config.stem:
            initial, config = _with_stem(initial, config, train_frames, args.stem, args.stem_steps, args.out)
    else:
        config = DetectorConfig(
            backbone=args.backbone,
            alpha=args.alpha,
            head_channels=args.head_channels,
            labels=labels,
            anchors=anchors_for(train_frames, args.input_size, args.strides or DEFAULT_STRIDES),
            fpn=args.fpn,
            stem=args.stem or "backbone",
        )
    if args.weights and not args.weights.is_file():
        raise GalaxyEdgeError(f"{args.weights}: no such weights file")
    settings = DetectorTrainSettings(
        epochs=args.epochs or (100_000 if args.time_budget else 40),
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size or 16,
        # From a trained detector, a few dozen frames of a new camera: 1e-4 gained most on frames of
        # another look (README, Fine-tune on your rig); 2e-3 from scratch.
        learning_rate=args.learning_rate or (1e-4 if args.initial else 2e-3),
        seed=args.seed,
        freeze_backbone=args.freeze_backbone,
        workers=args.workers,
        time_budget_s=args.time_budget,
    )
    train_detector(
        train_frames,
        val_frames,
        config,
        settings,
        args.out,
        initial,
        str(args.weights) if args.weights else None,
    )
    if args.initial and same_labels and held_out_validation:
        _compare_with_start(args.initial, args.out, val_pairs, labels)
    print(f"model {args.out / 'detector.keras'}, summary {args.out / 'detector.json'}")
    return 0


def _compare_with_start(start: Path, out: Path, val_pairs, labels) -> None:
    """After a run with --from: both models' mAP on the validation frames, printed and kept in the
    summary. On a few dozen frames of a new camera fine-tuning may gain little or lose (README, Fine-tune
    on your rig), and the user should know which model to keep."""
    from detection.evaluate import compare_on_frames

    result = compare_on_frames(start, out / "detector.keras", val_pairs, labels)
    summary_path = out / "detector.json"
    summary = json.loads(summary_path.read_text())
    summary["validation_against_start"] = result
    summary_path.write_text(json.dumps(summary, indent=1))
    before, after = result["start"], result["trained"]
    print(
        f"validation frames ({result['frames']}), mAP@0.5 / mAP@0.5:0.95: {before['map50']:.3f} / "
        f"{before['map']:.3f} for {start}, {after['map50']:.3f} / {after['map']:.3f} after training"
    )
    if after["map50"] < before["map50"]:
        print(
            f"warning: the trained detector scores lower on the validation frames than {start}; keep "
            "that one, or annotate more frames (a few frames give a noisy figure)",
            file=sys.stderr,
        )


def _pruned(source, source_config, frames, keep_fraction: float, min_stride: int):
    """`source` with fewer expansion channels (detection.prune), ranked on 64 training crops drawn
    from a fixed seed, so a resumed run prunes the same channels."""
    from detection.prune import prune_detector, sample_tiles

    tiles = sample_tiles(frames, source_config.input_size)
    model, config = prune_detector(source, source_config, tiles, keep_fraction, min_stride)
    before, after = source.count_params(), model.count_params()
    print(f"pruned: {before:,} -> {after:,} parameters; expansions {config.expansions}", file=sys.stderr)
    return model, config


def _with_stem(source, source_config, train_frames, stem: str, steps: int, out: Path):
    """`source` with the patchify stem fitted to its features (detection.stem). A resumed run
    (OUT/backup present) skips the fit: its checkpoint holds the fitted and trained weights."""
    import dataclasses

    from detection.model import build_detector
    from detection.stem import with_patchify_stem
    from galaxy_edge.errors import GalaxyEdgeError

    if stem != "patchify":
        raise GalaxyEdgeError(f"--stem {stem}: a model with the {source_config.stem} stem cannot go back")
    if (out / "backup").exists():
        config = dataclasses.replace(source_config, stem=stem)
        print(f"stem {stem}: resuming, the fit is in {out / 'backup'}", file=sys.stderr)
        return build_detector(config), config
    model, config, error = with_patchify_stem(source, source_config, train_frames, steps)
    print(f"stem {stem}: fitted, relative error {error:.4f} of the replaced layers' output", file=sys.stderr)
    return model, config


def _with_fpn(source, source_config):
    """`source` with a top-down pathway added, computing what it did until training moves it."""
    import dataclasses

    from detection.model import build_detector, transfer_weights

    config = dataclasses.replace(source_config, fpn=True)
    model = build_detector(config)
    copied = transfer_weights(source, source_config, model, config)
    print(f"fpn: {copied} layers start from the given model's weights", file=sys.stderr)
    return model, config


def _with_labels(source, source_config, labels: list[str]):
    """A detector of `labels` from one trained on others (see relabel_detector)."""
    from detection.model import relabel_detector

    kept = [name for name in labels if name in source_config.labels]
    model, config = relabel_detector(source, source_config, labels)
    print(
        f"labels {labels}: {kept or 'none'} keep the given model's scores, the rest start anew "
        f"(it detected {source_config.labels})",
        file=sys.stderr,
    )
    return model, config


def _with_strides(source, source_config, train_frames, strides: tuple[int, ...]):
    """A detector with other feature levels, starting from `source`'s weights."""
    import dataclasses

    from detection.model import build_detector, transfer_weights
    from detection.train import anchors_for

    config = dataclasses.replace(
        source_config, anchors=anchors_for(train_frames, source_config.input_size, strides)
    )
    model = build_detector(config)
    copied = transfer_weights(source, source_config, model, config)
    print(f"levels {list(strides)}: {copied} layers start from the given model's weights", file=sys.stderr)
    return model, config


def run_evaluate(args: argparse.Namespace) -> int:
    from detection.evaluate import evaluate_detector
    from galaxy_edge.errors import GalaxyEdgeError
    from galaxy_edge.gz2 import DEFAULT_GZ2_DIR

    if not args.model or len(args.model) != 1:
        raise GalaxyEdgeError("give one --model (.tflite with its card, or a .keras from train --detector)")
    gz2 = None
    if args.gz2:
        gz2 = DEFAULT_GZ2_DIR if args.gz2 == "default" else Path(args.gz2)
    report = evaluate_detector(
        args.model[0],
        data=args.data,
        out=args.out,
        gz2=gz2,
        sky_frames=args.sky_frame,
        score_threshold=args.score_threshold,
        draw=args.draw,
        verify=args.verify,
        box_refiner=args.box_refiner,
        frame_models=args.frame_model,
    )
    coco = report.get("coco")
    if coco:
        print(
            f"mAP@0.5 {coco['map50']:.4f}, mAP@0.5:0.95 {coco['map']:.4f}, AR@10 {coco['ar10']:.4f} "
            f"on {report['data']['frames']} frames ({report['data']['boxes']} boxes); best F1 "
            f"{coco.get('best_f1_iou50', 0):.3f} at score {coco.get('best_f1_threshold', 0):.2f}"
        )
    if report.get("recall_by_size"):
        print(
            f"recall at IoU 0.5, score {report['score_threshold']:.2f}, by the box's longer side: "
            + ", ".join(
                f"{row['size']} {row['recall']:.2f} ({row['count']})"
                for row in report["recall_by_size"]
                if row["count"]
            )
        )
    if "gz2_central" in report:
        central = report["gz2_central"]
        print(
            f"real GZ2: central-galaxy recall {central['recall']:.4f} on {central['count']} images, "
            f"{central['other_per_image']:.2f} other detections per image"
        )
    if "gz2_small" in report:
        small = report["gz2_small"]
        print(
            f"real GZ2, small: {small['images']} held-out galaxies shrunk into 1280x720 mosaics: "
            + ", ".join(
                f"{row['shrink']:g}x ({row['cell']}-pixel cells) recall {row['recall']:.3f}, "
                f"{row['other_per_cell']:.2f} other boxes per cell"
                for row in small["by_shrink"]
            )
        )
    for drawn in report.get("sky_frames", []):
        print(f"{drawn['frame']}: {drawn['detections']} detections drawn in {drawn['drawn']}")
    print(f"report in {args.out / 'report.json'}")
    return 0
