"""Comparing and combining classifiers: k-fold cross-validation of two configurations with a
Wilcoxon signed-rank test (as the seed project did), and a weighted ensemble."""

from __future__ import annotations

import numpy as np

from classification.data import ImageSet
from classification.model import CNNConfig
from classification.train import TrainSettings


def cross_validate(
    data: ImageSet, configs: dict[str, CNNConfig], folds: int, settings: TrainSettings, out, progress=None
) -> dict:
    """Accuracy of each configuration on each held-out fold (the same folds for all), and the
    Wilcoxon signed-rank test of the paired differences between the first two."""
    from pathlib import Path

    from scipy.stats import wilcoxon
    from sklearn.model_selection import StratifiedKFold

    from classification.evaluate import predict
    from classification.train import train_classifier

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=settings.seed)
    scores: dict[str, list[float]] = {name: [] for name in configs}
    for fold, (train_index, test_index) in enumerate(splitter.split(data.images, data.labels)):
        # Early stopping watches a tenth of the training part, never the held-out fold.
        rng = np.random.default_rng(settings.seed + fold)
        shuffled = rng.permutation(train_index)
        cut = max(1, len(shuffled) // 10)
        validation, train = data.subset(np.sort(shuffled[:cut])), data.subset(np.sort(shuffled[cut:]))
        test = data.subset(test_index)
        for name, config in configs.items():
            model = train_classifier(train, validation, config, settings, Path(out) / f"fold{fold}_{name}")
            accuracy = float((predict(model, test.images).argmax(1) == test.labels).mean())
            scores[name].append(accuracy)
            if progress:
                progress(fold, name, accuracy)
    names = list(configs)
    result = {
        "folds": folds,
        "accuracy": scores,
        "mean": {n: float(np.mean(v)) for n, v in scores.items()},
        "std": {n: float(np.std(v)) for n, v in scores.items()},
    }
    if len(names) >= 2:
        a, b = np.array(scores[names[0]]), np.array(scores[names[1]])
        if np.allclose(a, b):
            result["wilcoxon"] = {"statistic": 0.0, "p_value": 1.0, "note": "identical fold accuracies"}
        else:
            test = wilcoxon(a, b)
            result["wilcoxon"] = {
                "statistic": float(test.statistic),
                "p_value": float(test.pvalue),
                "compared": names[:2],
                "note": f"with {folds} folds the smallest possible two-sided p is {2 / 2**folds:.4f}",
            }
    return result


def fit_ensemble_weights(probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the log-loss of the weighted mean."""
    from scipy.optimize import minimize

    stacked = np.stack(probabilities)  # (models, N, classes)

    def loss(logits: np.ndarray) -> float:
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        mixed = np.tensordot(weights, stacked, axes=1)
        return float(-np.log(np.clip(mixed[np.arange(len(labels)), labels], 1e-9, 1)).mean())

    solution = minimize(
        loss,
        np.zeros(len(probabilities)),
        method="Nelder-Mead",
        options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 2000},
    )
    weights = np.exp(solution.x - solution.x.max())
    return weights / weights.sum()


def ensemble(probabilities: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(np.asarray(weights), np.stack(probabilities), axes=1)
