"""Weight averaging of models that share an architecture and a starting point: a model soup
(Wortsman et al. 2022), or WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models",
CVPR 2022) when the two are a model and its own fine-tuned descendant.

A fine-tuning phase on more simulated data can gain on simulation and lose on real images; WiSE-FT's
finding is that the halfway point between the two keeps most of the first's robustness and most of
the second's gain. Keras has no weight-averaging verb, so it is written here: an elementwise
weighted mean of every float variable, batch-norm statistics included (as WiSE-FT interpolates
them all); integer variables (seed states, counters) are the first model's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from galaxy_edge.errors import GalaxyEdgeError


def mixing_weights(count: int, weights: Sequence[float] | None) -> np.ndarray:
    """The weights of `count` models: equal by default; non-negative, and normalized to sum to one."""
    if count < 2:
        raise GalaxyEdgeError(f"weight averaging needs at least two models, got {count}")
    if weights is None:
        return np.full(count, 1.0 / count)
    values = np.asarray(weights, np.float64)
    if len(values) != count:
        raise GalaxyEdgeError(f"{len(values)} weights for {count} models: give one weight per model")
    if (values < 0).any() or not np.isfinite(values).all() or values.sum() <= 0:
        raise GalaxyEdgeError(f"weights {list(weights)}: give non-negative numbers with a positive sum")
    return values / values.sum()


def average_models(paths: Sequence[Path], weights: Sequence[float] | None = None):
    """A Keras model whose variables are the weighted mean of the models at `paths`; it has the
    first model's architecture. Models whose variables differ in number or shape are refused,
    naming the files."""
    import keras

    mix = mixing_weights(len(paths), weights)
    models = []
    for path in paths:
        if not Path(path).is_file():
            raise GalaxyEdgeError(f"{path}: no such model")
        models.append(keras.models.load_model(path, compile=False))
    first = models[0]
    all_values = [model.get_weights() for model in models]
    reference = all_values[0]
    for path, values in zip(paths[1:], all_values[1:], strict=True):
        if len(values) != len(reference):
            raise GalaxyEdgeError(
                f"{path}: {len(values)} variables where {paths[0]} has {len(reference)}: "
                "not the same architecture"
            )
        for k, (a, b) in enumerate(zip(reference, values, strict=True)):
            if a.shape != b.shape:
                raise GalaxyEdgeError(
                    f"{path}: variable {k} ({first.weights[k].path}) has shape {b.shape} where {paths[0]} "
                    f"has {a.shape}: not the same architecture"
                )
    averaged = []
    for k, first_value in enumerate(reference):
        if not np.issubdtype(first_value.dtype, np.floating):
            averaged.append(first_value)
            continue
        total = sum(w * values[k].astype(np.float64) for w, values in zip(mix, all_values, strict=True))
        averaged.append(total.astype(first_value.dtype))
    first.set_weights(averaged)
    return first


def save_average(paths: Sequence[Path], out: Path, weights: Sequence[float] | None = None) -> Path:
    """Average the models into `out` (.keras) and write its summary beside it: the first model's
    summary (its configuration, so `train --config` reads it) with the sources and their weights."""
    out = Path(out)
    if out.suffix != ".keras":
        raise GalaxyEdgeError(f"{out}: the averaged model is saved as .keras")
    model = average_models(paths, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    mix = mixing_weights(len(paths), weights)
    summary: dict = {}
    first_summary = Path(paths[0]).with_suffix(".json")
    if first_summary.is_file():
        summary = json.loads(first_summary.read_text())
        for key in ("history", "test", "best_val_accuracy", "training_seconds"):
            summary.pop(key, None)  # the first model's run, not the average's
    sources = []
    for path, weight in zip(paths, mix, strict=True):
        source = {"model": str(path), "weight": float(weight)}
        path_summary = Path(path).with_suffix(".json")
        if path_summary.is_file():  # what each model was trained on
            source["data"] = json.loads(path_summary.read_text()).get("data", {}).get("source")
        sources.append(source)
    summary["weight_average"] = {
        "method": "elementwise weighted mean of all float variables (WiSE-FT / model soup)",
        "sources": sources,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return out
