"""Evaluating a classifier: accuracy, per-class precision/recall/F1, macro ROC-AUC, confusion
matrix, calibration (expected calibration error, reliability diagram), the reject option's
coverage-accuracy curve, test-time rotations, the real GZ2 spiral check, and the classifier's job in
the chain: the galaxies of simulated frames, cut as the runtime cuts them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from galaxy_edge.schemes import get_scheme


def predict(model, images: np.ndarray, rotations: bool = False, batch_size: int = 256) -> np.ndarray:
    """Class probabilities; with rotations, the mean over the 8 rotations and flips."""
    if not rotations:
        return model.predict(images, batch_size=batch_size, verbose=0)
    total = np.zeros((len(images), model.output_shape[-1]), np.float64)
    for flipped in (images, images[:, :, ::-1]):
        for turns in range(4):
            total += model.predict(
                np.ascontiguousarray(np.rot90(flipped, turns, axes=(1, 2))), batch_size=batch_size, verbose=0
            )
    return (total / 8).astype(np.float32)


class TFLiteClassifier:
    """A .tflite classifier with its card (the int8 file a Pi runs), through the edge runtime, behind
    the Keras-style predict() and shapes that this module's functions use."""

    def __init__(self, path: Path) -> None:
        from edge.models import Classifier

        self.classifier = Classifier(path)
        self.resolution_floor_px = self.classifier.resolution_floor_px or None
        self.input_shape = (None, self.classifier.height, self.classifier.width, 3)
        self.output_shape = (None, len(self.classifier.labels))

    def predict(self, images: np.ndarray, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        # Datasets hold RGB images; the edge runtime takes BGR crops as OpenCV gives them.
        return self.classifier.classify([image[..., ::-1] for image in images])


def load_classifier(path: Path):
    """A .keras model, or a .tflite (with its card beside it) run by the edge runtime."""
    if Path(path).suffix == ".tflite":
        return TFLiteClassifier(Path(path))
    import keras

    return keras.models.load_model(path)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15):
    """ECE over equal-width confidence bins, with the per-bin (confidence, accuracy, count)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece, table = 0.0, []
    for low, high in itertools.pairwise(edges):
        members = (confidence > low) & (confidence <= high)
        if members.any():
            gap = abs(confidence[members].mean() - correct[members].mean())
            ece += members.mean() * gap
            table.append(
                (float(confidence[members].mean()), float(correct[members].mean()), int(members.sum()))
            )
    return float(ece), table


def coverage_accuracy(probabilities: np.ndarray, labels: np.ndarray, thresholds=None) -> list[dict]:
    """For each reject threshold: the fraction of crops kept and the accuracy on them."""
    thresholds = np.linspace(0.0, 0.95, 20) if thresholds is None else thresholds
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    curve = []
    for t in thresholds:
        kept = confidence >= t
        curve.append(
            {
                "threshold": float(t),
                "coverage": float(kept.mean()),
                "accuracy": float(correct[kept].mean()) if kept.any() else float("nan"),
            }
        )
    return curve


FRAME_SNR_BINS = (0, 30, 100, 300, 1000, np.inf)  # of a frame galaxy's S/N (its sizes: the detector's bins)
# Finer box-size bins for the resolution floor, px of the box's longer side.
FLOOR_BINS_PX = (0, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 128, np.inf)
FLOOR_MIN_COUNT = 30  # bins with fewer galaxies do not count either way


def resolution_floor(
    correct: np.ndarray,
    labels: np.ndarray,
    sides: np.ndarray,
    applied_px: float | None = None,
    edges=FLOOR_BINS_PX,
) -> dict:
    """The box size below which a class label carries no information. Per size bin: top-1 accuracy,
    its Wilson 95 % interval, and what a constant answer scores there (the share of the bin's most
    common true class). A bin is informative when the interval's lower bound is above the constant
    answer's score; the floor is the lower edge of the smallest bin from which every bin upward (of
    at least FLOOR_MIN_COUNT galaxies) is informative (None when the largest is not). The galaxies
    under and over the floor in use (applied_px, else the one found) are also scored together."""
    table = []
    for low, high in itertools.pairwise(edges):
        chosen = (sides >= low) & (sides < high)
        if chosen.any():
            table.append(
                {"range": f"{low:g}-{high:g}", "low_px": float(low), **_scored(correct, labels, chosen)}
            )
    floor = None
    for row in reversed(table):
        if row["count"] < FLOOR_MIN_COUNT:
            continue
        if not row["informative"]:
            break
        floor = row["low_px"]
    result = {"floor_px": floor, "min_count": FLOOR_MIN_COUNT, "by_size_px": table}
    applied = floor if applied_px is None else applied_px
    if applied is not None:
        result["applied_px"] = float(applied)
        for name, chosen in (("under", sides < applied), ("over", sides >= applied)):
            result[name] = _scored(correct, labels, chosen) if chosen.any() else None
    return result


def _scored(correct: np.ndarray, labels: np.ndarray, chosen: np.ndarray) -> dict:
    from scipy.stats import binomtest

    count, hits = int(chosen.sum()), int(correct[chosen].sum())
    interval = binomtest(hits, count).proportion_ci(method="wilson")
    constant = float(np.bincount(labels[chosen]).max() / count)
    return {
        "count": count,
        "accuracy": hits / count,
        "interval_95": [float(interval.low), float(interval.high)],
        "constant_answer": constant,
        "informative": bool(interval.low > constant),
    }


def frame_check(
    probabilities: np.ndarray,
    names: list[str],
    sides: np.ndarray,
    snrs: np.ndarray,
    scheme: str,
    reject_threshold: float | None = None,
    floor_px: float | None = None,
) -> dict:
    """Top-1 accuracy on frame galaxies, by box size and by S/N, with the share the chain's reject
    option keeps (top probability at least reject_threshold; the rest are 'uncertain') and the
    accuracy of those it keeps, and the resolution floor (resolution_floor; floor_px: the one in
    use, the classifier card's)."""
    from classification.data import class_labels
    from detection.evaluate import SIZE_BINS_PX
    from edge.chain import ChainSettings

    threshold = ChainSettings.reject_threshold if reject_threshold is None else reject_threshold
    labels = class_labels(names, scheme, "frame galaxies")
    correct = probabilities.argmax(axis=1) == labels
    kept = probabilities.max(axis=1) >= threshold

    def rows(values: np.ndarray, edges) -> list[dict]:
        table = []
        for low, high in itertools.pairwise(edges):
            chosen = (values >= low) & (values < high)
            if not chosen.any():
                continue
            table.append(
                {
                    "range": f"{low:g}-{high:g}",
                    "count": int(chosen.sum()),
                    "accuracy": float(correct[chosen].mean()),
                    "kept": float(kept[chosen].mean()),
                    "kept_accuracy": float(correct[chosen & kept].mean()) if (chosen & kept).any() else None,
                }
            )
        return table

    return {
        "count": len(labels),
        "accuracy": float(correct.mean()) if len(labels) else None,
        "reject_threshold": threshold,
        "kept": float(kept.mean()) if len(labels) else None,
        "kept_accuracy": float(correct[kept].mean()) if kept.any() else None,
        "by_size_px": rows(sides, (*SIZE_BINS_PX, np.inf)),
        "by_snr": rows(snrs, FRAME_SNR_BINS),
        "resolution": resolution_floor(correct, labels, np.asarray(sides), floor_px),
    }


def accuracy_by_part(correct: np.ndarray, labels: np.ndarray, parts: int = 10, seed: int = 0) -> dict | None:
    """Accuracy on `parts` disjoint parts of the set, each with every class in proportion (the
    spread a smaller test split would show), and the binomial 95 % interval of the whole set's
    accuracy; None for sets too small to cut into parts of 20."""
    if len(labels) < 20 * parts:
        return None
    rng = np.random.default_rng(seed)
    part_of = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # Deal each class round the parts from a random start, so rare classes spread evenly.
        part_of[members] = (np.arange(len(members)) + rng.integers(parts)) % parts
    accuracies = [float(correct[part_of == k].mean()) for k in range(parts)]
    accuracy = float(correct.mean())
    half_width = 1.96 * np.sqrt(accuracy * (1 - accuracy) / len(correct))
    return {
        "parts": parts,
        "part_size": len(labels) // parts,
        "accuracies": accuracies,
        "min": min(accuracies),
        "max": max(accuracies),
        "interval_95": [max(accuracy - half_width, 0.0), min(accuracy + half_width, 1.0)],
    }


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, scheme: str) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    names = list(get_scheme(scheme).names)
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(names)), zero_division=0
    )
    present = np.unique(labels)
    try:
        auc = (
            float(
                roc_auc_score(
                    labels,
                    probabilities[:, present] / probabilities[:, present].sum(1, keepdims=True),
                    multi_class="ovr",
                    average="macro",
                    labels=present,
                )
            )
            if len(present) > 2
            else None
        )
    except ValueError:
        auc = None
    ece, reliability = expected_calibration_error(probabilities, labels)
    return {
        "accuracy": float((predicted == labels).mean()),
        "macro_roc_auc": auc,
        "expected_calibration_error": ece,
        "per_class": {
            n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for n, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=range(len(names))).tolist(),
        "reliability": reliability,
        "coverage_accuracy": coverage_accuracy(probabilities, labels),
        "by_part": accuracy_by_part(predicted == labels, labels),
        "count": len(labels),
    }


def spiral_check(probabilities: np.ndarray, spiral: np.ndarray, scheme: str) -> dict:
    """The real-data check: probability mass on the scheme's spiral classes against GZ2's
    `spiral` label: ROC-AUC, and accuracy at the best threshold."""
    from sklearn.metrics import roc_auc_score, roc_curve

    indices = list(get_scheme(scheme).spiral_indices)
    score = probabilities[:, indices].sum(axis=1)
    false_positive, true_positive, thresholds = roc_curve(spiral, score)
    accuracy = (true_positive * spiral.sum() + (1 - false_positive) * (len(spiral) - spiral.sum())) / len(
        spiral
    )
    best = int(np.argmax(accuracy))
    return {
        "roc_auc": float(roc_auc_score(spiral, score)),
        "best_accuracy": float(accuracy[best]),
        "best_threshold": float(min(thresholds[best], 1.0)),
        "count": len(spiral),
    }


def save_plots(metrics: dict, scheme: str, out: Path) -> list[Path]:
    """Confusion matrix and reliability diagram PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = get_scheme(scheme).titles
    matrix = np.array(metrics["confusion_matrix"], np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{int(value)}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if normalised[i, j] > 0.5 else "black",
        )
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {metrics['accuracy']:.3f}")
    fig.tight_layout()
    confusion_path = out / "confusion_matrix.png"
    fig.savefig(confusion_path, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    bins = metrics["reliability"]
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot([b[0] for b in bins], [b[1] for b in bins], "o-")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {metrics['expected_calibration_error']:.3f}")
    fig.tight_layout()
    reliability_path = out / "reliability.png"
    fig.savefig(reliability_path, dpi=110)
    plt.close(fig)
    return [confusion_path, reliability_path]


def write_report(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluation.json"
    path.write_text(json.dumps(report, indent=1))
    return path
