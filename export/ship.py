"""Put a trained model in models/: the Keras checkpoint without optimizer state (for
fine-tuning with `train --from`) and its training summary, and evaluation results merged into
a model card.

    python -m export.ship RUN/classifier.keras models/galaxy10_classifier.keras \
        [--card models/galaxy10_classifier_int8.json --evaluation RUN/eval/evaluation.json]
        [--resolution-floor RUN/eval_frames/evaluation.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def ship_keras(source: Path, target: Path) -> Path:
    import keras

    model = keras.models.load_model(source, compile=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save(target)  # uncompiled: weights and architecture only
    summary = source.with_suffix(".json")
    if summary.is_file():
        values = json.loads(summary.read_text())
        values.pop("history", None)
        target.with_suffix(".json").write_text(json.dumps(values, indent=1))
    return target


def merge_evaluation(card_path: Path, evaluation_path: Path, key: str = "simulated_held_out") -> Path:
    """Copy the evaluation's figures (not its long curves) into the card's metrics; the simulated
    data's figures go under `key` (another key keeps a second evaluation beside the first: say
    "simulated_fresh_frames", 1,000 frames, for figures precise to a few thousandths)."""
    card = json.loads(card_path.read_text())
    report = json.loads(evaluation_path.read_text())
    metrics = card.setdefault("metrics", {})
    if report.get("verifier"):
        # A detector evaluated with its verifier: those figures go beside the detector's own.
        metrics = metrics.setdefault("with_verifier", {})
        metrics["verifier"] = Path(report["verifier"]).name
    if report.get("box_refiner"):  # the card's optional box refiner was on: say so beside the figures
        metrics["box_refiner"] = Path(report["box_refiner"]).name
    metrics["evaluated_model"] = report.get("model")
    if "data" in report and "accuracy" in report.get("data", {}):  # classifier
        data = report["data"]
        metrics[key] = {
            k: data[k]
            for k in ("source", "count", "accuracy", "macro_roc_auc", "expected_calibration_error", "by_part")
            if k in data
        }
        metrics[key]["confusion_matrix"] = data.get("confusion_matrix")
        metrics[key]["per_class_recall"] = {
            name: values["recall"] for name, values in data.get("per_class", {}).items()
        }
        if "data_rotations" in report:  # test-time averaging over the 8 rotations and flips
            metrics[key]["rotations"] = report["data_rotations"]
    if "gz2_spiral_check" in report:
        metrics["real_gz2_spiral_check"] = report["gz2_spiral_check"]
    if "frames" in report:  # classifier: the galaxies of simulated frames, cut as the chain cuts them
        metrics["simulated_frame_galaxies"] = report["frames"]
    if "coco" in report:  # detector
        metrics[key] = {
            "source": report["data"]["source"],
            "frames": report["data"]["frames"],
            **{k: v for k, v in report["coco"].items() if k != "pr_curve_iou50"},
        }
        if "recall_by_size" in report:
            metrics[key]["recall_by_size"] = report["recall_by_size"]
            metrics[key]["recall_threshold"] = report.get("score_threshold")
    if "gz2_central" in report:
        metrics["real_gz2_central_galaxy"] = report["gz2_central"]
    if "gz2_small" in report:
        metrics["real_gz2_small_galaxies"] = report["gz2_small"]
    if report.get("sky_frames"):
        metrics["real_sky_frames"] = report["sky_frames"]
    card_path.write_text(json.dumps(card, indent=1))
    return card_path


def set_resolution_floor(card_path: Path, evaluation_path: Path) -> float | None:
    """Write the floor that `evaluate --classifier --frames` found into the classifier's card, where
    the chain reads it (edge.chain: smaller galaxies are 'unresolved'). Choose it on frames that are
    not the held-out ones. None (the card left as it is) when no size was informative."""
    card = json.loads(card_path.read_text())
    report = json.loads(evaluation_path.read_text())
    if "frames" not in report:
        raise SystemExit(f"{evaluation_path}: no frame galaxies (evaluate --classifier --frames DIR)")
    resolution = report["frames"]["resolution"]
    floor = resolution["floor_px"]
    if floor is None:
        print(f"{evaluation_path}: no box size gave informative labels; {card_path} keeps no floor")
        return None
    card["resolution_floor_px"] = floor
    card["resolution_floor_chosen_on"] = {
        "frames": report["frames"]["source"],
        "rule": "the smallest size from which every size bin's accuracy (Wilson 95 % lower bound) beats "
        f"a constant answer (bins of at least {resolution['min_count']} galaxies)",
    }
    card_path.write_text(json.dumps(card, indent=1))
    return floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--card", type=Path, action="append", default=[])
    parser.add_argument(
        "--evaluation", type=Path, action="append", default=[], help="evaluation reports, merged in order"
    )
    parser.add_argument(
        "--fresh-evaluation",
        type=Path,
        action="append",
        default=[],
        help="evaluation reports on a large fresh set (say 1,000 frames), kept beside the held-out figures "
        "as simulated_fresh_frames",
    )
    parser.add_argument(
        "--resolution-floor",
        type=Path,
        metavar="EVALUATION",
        help="a classifier's `evaluate --frames` report on frames chosen for it (not the held-out ones): "
        "its resolution floor goes into each --card",
    )
    args = parser.parse_args(argv)
    ship_keras(args.source, args.target)
    for card in args.card:
        for evaluation in args.evaluation:
            merge_evaluation(card, evaluation)
        for evaluation in args.fresh_evaluation:
            merge_evaluation(card, evaluation, key="simulated_fresh_frames")
        if args.resolution_floor:
            set_resolution_floor(card, args.resolution_floor)
    print(f"shipped {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
