"""`galaxy-edge tune`: keras-tuner Bayesian optimisation of the CNN's shape under a hard
parameter and int8-size budget, objective validation accuracy; resumable across sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from classification.data import ImageSet
from classification.model import PARAMETER_BUDGET, CNNConfig, build_cnn, count_parameters
from classification.train import TrainSettings, training_datasets

FILTER_CHOICES = [8, 12, 16, 24, 32, 48, 64, 96, 128]
INT8_BYTES_PER_PARAMETER = 1.1  # weights, plus per-channel scales and the flatbuffer's tensors
INT8_OVERHEAD_BYTES = 16_000
INT8_BUDGET_BYTES = 200_000


def int8_size_estimate(parameters: int) -> int:
    return int(parameters * INT8_BYTES_PER_PARAMETER + INT8_OVERHEAD_BYTES)


def fit_budget(config: CNNConfig, budget: int) -> CNNConfig:
    """Shrink a config until it fits the budget: the widest layer (or the dense layer) steps
    down a choice at a time. Deterministic, so the tuned hyperparameters rebuild the same model,
    and no trial is wasted on a model that could never ship."""
    while (
        count_parameters(config) > budget or int8_size_estimate(count_parameters(config)) > INT8_BUDGET_BYTES
    ):
        widest = int(np.argmax(config.filters))
        if config.dense_units > 32 and config.dense_units >= config.filters[widest]:
            config.dense_units //= 2
        elif config.filters[widest] > FILTER_CHOICES[0]:
            config.filters[widest] = max(c for c in FILTER_CHOICES if c < config.filters[widest])
        elif config.dense_units:
            config.dense_units = 0
        else:
            break
    return config


def config_from_hyperparameters(
    hp, input_size: int, num_classes: int, budget: int = PARAMETER_BUDGET
) -> CNNConfig:
    """The seed's search space (filters and kernel sizes per conv layer, dense units, dropout)
    plus depth and learning rate, fitted to the budget."""
    depth = hp.Int("depth", 2, 5)
    filters = [hp.Choice(f"filters_{i}", FILTER_CHOICES) for i in range(depth)]
    kernels = [hp.Choice(f"kernel_{i}", [3, 5]) for i in range(depth)]
    config = CNNConfig(
        input_size=input_size,
        num_classes=num_classes,
        filters=filters,
        kernel_sizes=kernels,
        dense_units=hp.Choice("dense_units", [0, 32, 64, 128]),
        dropout=hp.Float("dropout", 0.1, 0.5, step=0.1),
        learning_rate=hp.Float("learning_rate", 3e-4, 5e-3, sampling="log"),
    )
    return fit_budget(config, budget)


def tune_classifier(
    train: ImageSet,
    validation: ImageSet,
    out: Path | str,
    trials: int = 20,
    epochs: int = 8,
    budget: int = PARAMETER_BUDGET,
    settings: TrainSettings | None = None,
    input_size: int = 69,
) -> dict:
    """Run (or resume) the search in out/tuner; writes out/tuning.json and returns it."""
    import keras_tuner

    settings = settings or TrainSettings()
    out = Path(out)
    num_classes = len(train.counts())

    def build(hp):
        return build_cnn(config_from_hyperparameters(hp, input_size, num_classes, budget))

    tuner = keras_tuner.BayesianOptimization(
        build,
        objective="val_accuracy",
        max_trials=trials,
        seed=settings.seed,
        directory=str(out),
        project_name="tuner",
        overwrite=False,  # resume an interrupted search
        max_consecutive_failed_trials=50,
    )
    train_data, validation_data, _ = training_datasets(train, validation, num_classes, settings)
    tuner.search(train_data, validation_data=validation_data, epochs=epochs, verbose=settings.verbose)
    trials_done = []
    for trial in tuner.oracle.trials.values():
        score = trial.score
        trials_done.append(
            {
                "trial": trial.trial_id,
                "status": str(trial.status),
                "val_accuracy": score,
                "hyperparameters": trial.hyperparameters.values,
            }
        )
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = config_from_hyperparameters(best_hp, input_size, num_classes, budget)
    result = {
        "best_config": best.to_dict(),
        "best_parameters": count_parameters(best),
        "best_val_accuracy": max((t["val_accuracy"] or 0) for t in trials_done),
        "budget_parameters": budget,
        "trials": sorted(trials_done, key=lambda t: -(t["val_accuracy"] or 0)),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps(result, indent=1, default=str))
    return result
