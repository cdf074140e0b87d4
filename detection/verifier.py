"""`galaxy-edge train --verifier`: a second look at a detector's candidates.

The detector ranks small galaxies like the stars around them: at stride 8 and beyond it has lost
the few pixels that tell a point source from an extended one. The verifier sees each candidate's
own pixels at native scale (edge.models.candidate_patches) and learns, on frames the detector never
trained on, which of its candidates match a galaxy (IoU 0.5 with a box that is not `difficult`).
Besides the pixels it takes the detector's logit and the box size (edge.models.candidate_priors),
so it learns what the detector's score misses, and how much that matters at each score and size.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.proposals import SkyProposalSettings
from edge.psf import ConcentrationMeasurement, PsfMeasurement
from galaxy_edge.errors import GalaxyEdgeError

if TYPE_CHECKING:
    from edge.models import Verifier

CALIBRATION_CANDIDATES = 2048  # training candidates kept for int8 calibration (the export draws from them)


@dataclass
class VerifierConfig:
    patch: int = 32  # native pixels: covers the galaxies the detector loses (under 16-32 pixels)
    context: float = 1.5  # a larger candidate's patch is 1.5x its longer side, shrunk to `patch`
    # Candidates at least this long keep the detector's score: on real frames the verifier, which
    # learned simulated galaxies, dropped obvious galaxies of 27-63 px (docs/verifier.md).
    max_side: float = 32.0
    max_candidates: int = 512  # per frame, the highest-scoring first: bounds the cost on crowded fields
    # The runtime's candidates: decoding below the detector's threshold costs NMS and voting over many
    # more anchors (the Hubble sample: 4,927 at 0.2, 712 at 0.35); 0.25 keeps it within a quarter of
    # the detector invokes' arm64 instructions there (docs/verifier.md).
    candidate_threshold: float = 0.25
    harvest_threshold: float = 0.05  # training sees the detector's candidates down to this score
    # Training moves each patch by up to this many pixels each way (harvested that much larger): a box
    # whose centre crosses a half pixel moves the runtime's patch by a whole one (docs/verifier.md).
    shift: int = 0
    # Small sources found by thresholding join the candidates (edge.proposals), in training as at
    # run time; None: the detector's candidates only.
    sky_proposals: dict | None = field(default_factory=lambda: asdict(SkyProposalSettings()))
    # The first convolution: "stride2" takes 2-pixel steps with twice the channels (about half the arm64
    # instructions an invoke, the same mAP: shipped since session 30, docs/verifier.md); "full" works at
    # the patch's resolution (the verifiers shipped before).
    stem: str = "stride2"


def harvest_candidates(
    detector_path: Path,
    frames: Path,
    config: VerifierConfig,
    centred_galaxies: Path | None = None,
    centred_shrinks: Sequence[float] = (),
    psf: PsfMeasurement | None = None,
    concentration: ConcentrationMeasurement | None = None,
) -> dict[str, np.ndarray]:
    """The detector's candidates (and with config.sky_proposals the sources found by thresholding that
    the runtime adds, at their prior score) on a labelImg folder: patches, priors, labels (1 galaxy, 0 not,
    -1 a `difficult` galaxy, left out of training), the frame index of each, whether it came from a
    mosaic of centred galaxies, (with `psf`) its frame's PSF width (edge.psf; else NaN) and (with
    `concentration` too) its concentration and its frame's stars' (edge.psf.source_concentration,
    edge.proposals.SkySources.star_concentration; else NaN). With
    centred_galaxies, also the candidates on mosaics of its training part shrunk by each of
    centred_shrinks (detection.centred): the one that stands for a cell's galaxy is labelled 1, the
    others there -1 (unlabelled sources)."""
    import cv2

    from annotations.dataset import usable_pairs
    from detection.centred import centred_images, centred_part, mosaics
    from edge.models import Detector, candidate_patches, candidate_priors
    from edge.proposals import proposals_beside, sky_sources
    from edge.tiling import detect_frame

    detector = Detector(detector_path, verify=False)
    detector.score_threshold = config.harvest_threshold
    proposals = SkyProposalSettings.from_card(config.sky_proposals) if config.sky_proposals else None
    pairs = usable_pairs(frames)
    keys = ("patches", "priors", "labels", "frames", "centred", "psf", "concentration", "star_concentration")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}

    def add(frame: np.ndarray, labelled, centred: bool = False) -> None:
        # Every size trains (larger candidates teach what galaxies look like too); the runtime
        # re-scores only those under max_side.
        found = detect_frame(detector, frame)
        chosen = _verified(found.boxes, found.scores, config, np.inf)
        boxes, scores = found.boxes[chosen], found.scores[chosen]
        # One pass over the sky for proposals and the PSF, as the runtime's Verifier.sky.
        sky = sky_sources(frame, proposals or SkyProposalSettings(), psf) if proposals or psf else None
        if proposals is not None:  # beside the candidates the runtime verifies, as edge.models does
            runtime = found.boxes[found.scores >= config.candidate_threshold]
            extra = proposals_beside(sky.boxes, runtime, proposals, config.max_side, detector.iou_threshold)
            boxes = np.concatenate([boxes, extra]).astype(np.float32)
            scores = np.concatenate([scores, np.full(len(extra), proposals.prior_score, np.float32)])
        parts["patches"].append(candidate_patches(frame, boxes, *harvest_patch(config)))
        parts["priors"].append(candidate_priors(boxes, scores))
        parts["labels"].append(labelled(boxes, scores))
        parts["frames"].append(np.full(len(boxes), len(parts["frames"]), np.int32))
        parts["centred"].append(np.full(len(boxes), centred))
        parts["psf"].append(np.full(len(boxes), sky.psf_fwhm if sky is not None else np.nan, np.float32))
        measured = psf is not None and concentration is not None
        concentrations = sky.concentrations(boxes, concentration) if measured else np.full(len(boxes), np.nan)
        stars = sky.star_concentration(concentration) if measured else np.nan
        parts["concentration"].append(concentrations.astype(np.float32))
        parts["star_concentration"].append(np.full(len(boxes), stars, np.float32))

    for index, (image_path, annotation) in enumerate(pairs):
        frame = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if frame is None:
            raise GalaxyEdgeError(f"{image_path}: cannot read the image")
        galaxies = [b for b in annotation.boxes if b.name == detector.labels[0]]
        add(frame, partial(_truth_labels, galaxies=galaxies))
        if index % 100 == 0:
            count = sum(map(len, parts["labels"]))
            print(f"harvest: {index + 1}/{len(pairs)} frames, {count} candidates", file=sys.stderr)
    if centred_galaxies is not None:
        paths = centred_part(centred_images(centred_galaxies), held_out=False)
        for shrink in centred_shrinks:
            for mosaic in mosaics(paths, shrink):
                add(mosaic.frame, partial(_cell_labels, mosaic=mosaic), centred=True)
            real = int(sum((labels == 1).sum() for labels in parts["labels"][len(pairs) :]))
            print(f"harvest: centred galaxies shrunk {shrink:g}x: {real} real in all", file=sys.stderr)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def harvest_patch(config: VerifierConfig) -> tuple[int, float]:
    """The side and context of the harvested patches: `shift` pixels larger on every side, the context
    scaled alike, so the central `patch` pixels are the runtime's patch (exactly, for candidates seen
    at native scale; larger ones are shrunk from a window 1 + 2 shift / patch times wider)."""
    side = config.patch + 2 * config.shift
    return side, config.context * side / config.patch


def shifted_views(patches: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    """A `patch`-pixel crop of each harvested patch at a random offset (the central crop is the
    runtime's patch): the candidate moved by up to the harvest's margin each way."""
    margin = patches.shape[1] - patch
    if not margin:
        return patches
    offsets = rng.integers(0, margin + 1, (len(patches), 2))
    views = np.empty((len(patches), patch, patch, patches.shape[3]), patches.dtype)
    for dy, dx in np.unique(offsets, axis=0):
        chosen = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
        views[chosen] = patches[chosen, dy : dy + patch, dx : dx + patch]
    return views


def _truth_labels(boxes: np.ndarray, scores: np.ndarray, galaxies: list) -> np.ndarray:
    """1 for a candidate at IoU 0.5 with a labelled galaxy, -1 with a `difficult` one, else 0."""
    from edge.tracking import iou_matrix

    truth = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in galaxies], np.float32).reshape(-1, 4)
    labels = np.zeros(len(boxes), np.int8)
    if len(truth) and len(boxes):
        overlaps = iou_matrix(boxes, truth)
        best, matched = overlaps.argmax(axis=1), overlaps.max(axis=1) >= 0.5
        difficult = np.array([b.difficult for b in galaxies], bool)[best]
        labels[matched] = np.where(difficult[matched], -1, 1)
    return labels


def _cell_labels(boxes: np.ndarray, scores: np.ndarray, mosaic) -> np.ndarray:
    """1 for the candidate that stands for a cell's galaxy: of those that cover its centre with a
    plausible size (detection.centred.centre_hits) and are centred on it (within a quarter of their
    longer side), the detector's best. The others are unlabelled (-1): nobody drew the galaxy's box,
    so a smaller or larger box on it is neither right nor wrong here."""
    from detection.centred import centre_hits

    labels = np.full(len(boxes), -1, np.int8)
    middles = (boxes[:, :2] + boxes[:, 2:]) / 2
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    offsets = np.abs(middles[None, :, :] - mosaic.centres[:, None, :]).max(axis=2)
    candidates = centre_hits(boxes, mosaic.centres, mosaic.cell) & (offsets <= sides[None] / 4)
    for row in candidates:
        if row.any():
            labels[np.flatnonzero(row)[np.argmax(scores[row])]] = 1
    return labels


def _verified(boxes: np.ndarray, scores: np.ndarray, config: VerifierConfig, max_side: float) -> np.ndarray:
    """The candidates under max_side, the best max_candidates first (edge.models.Verifier.rescore
    chooses the same way)."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    chosen = np.flatnonzero(sides < max_side)
    return chosen[np.argsort(-scores[chosen], kind="stable")[: config.max_candidates]]


def turned(
    patches: np.ndarray, priors: np.ndarray, quarter_turns: int, mirror: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Patches turned by quarter_turns x 90 degrees (np.rot90 over rows and columns), then mirrored
    left-right, and their priors with the box's width and height swapped for odd turns, as the
    turned box has them. A galaxy has no preferred orientation, so training sees all eight."""
    patches = np.rot90(patches, quarter_turns, axes=(1, 2))
    if quarter_turns % 2:
        priors = priors[:, [0, 2, 1]]
    if mirror:
        patches = patches[:, :, ::-1]
    return np.ascontiguousarray(patches), priors


VERIFIER_STEMS = ("full", "stride2")


def build_verifier(patch: int, stem: str = "full"):
    """Inputs: candidate patches (pixels 0-255) and priors (edge.models.candidate_priors); output:
    the galaxy logit. The priors join the CNN's features before the last two layers, so how much
    the pixels count can depend on the detector's score and the box size. stem: VerifierConfig.stem."""
    import keras
    from keras import layers

    def separable(x, channels: int, stride: int):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
        x = layers.Conv2D(channels, 1, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU(6.0)(x)

    pixels = keras.Input((patch, patch, 3), name="patch")
    priors = keras.Input((3,), name="priors")
    if stem not in VERIFIER_STEMS:
        raise GalaxyEdgeError(f"verifier stem {stem!r}: choose one of {', '.join(VERIFIER_STEMS)}")
    blocks = [(16, 2), (16, 1), (32, 2), (32, 1), (32, 2)]
    if stem == "stride2":  # the stem does the first block's halving
        blocks = blocks[1:]
    x = layers.Rescaling(1 / 127.5, -1)(pixels)
    x = layers.Conv2D(
        8 if stem == "full" else 16, 3, strides=1 if stem == "full" else 2, padding="same", use_bias=False
    )(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    for channels, stride in blocks:
        x = separable(x, channels, stride)
    x = layers.Concatenate()([layers.Flatten()(x), priors])
    x = layers.Dense(32)(x)
    x = layers.ReLU(6.0)(x)
    return keras.Model([pixels, priors], layers.Dense(1, name="galaxy_logit")(x), name="verifier")


def train_verifier(
    detector_path: Path,
    frames: Path,
    out: Path,
    epochs: int = 8,
    batch_size: int = 256,
    config: VerifierConfig | None = None,
    seed: int = 0,
    centred_galaxies: Path | None = None,
    centred_shrinks: Sequence[float] = (),
) -> dict:
    """Harvest the detector's candidates on `frames` (and on centred_galaxies' mosaics, see
    harvest_candidates), train, and write out/verifier.keras (best validation loss; every tenth
    frame, simulated or mosaic, validates), out/verifier.json, out/calibration.npz (training
    candidates for int8 calibration) and out/validation.npz (for the export's parity check)."""
    import keras

    config = config or VerifierConfig()
    if not Path(detector_path).is_file():
        raise GalaxyEdgeError(f"{detector_path}: no such detector (train --verifier --detector-model)")
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    data = harvest_candidates(detector_path, frames, config, centred_galaxies, centred_shrinks)
    usable = data["labels"] >= 0
    patches, priors = data["patches"][usable], data["priors"][usable]
    margin = config.shift
    central = patches[:, margin : margin + config.patch, margin : margin + config.patch]
    labels, frame_index = data["labels"][usable].astype(np.float32), data["frames"][usable]
    real_galaxies = int((labels[data["centred"][usable]] == 1).sum())
    validation = frame_index % 10 == 0
    if labels[~validation].sum() < 1 or labels[validation].sum() < 1 or (labels == 0).sum() < 1:
        raise GalaxyEdgeError(f"{frames}: too few candidates of both kinds to train a verifier")
    print(
        f"{len(labels)} candidates ({labels.mean():.3f} galaxies), {validation.sum()} for validation",
        file=sys.stderr,
    )
    model = build_verifier(config.patch, config.stem)
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
    )
    rng = np.random.default_rng(seed)
    fit_index = np.flatnonzero(~validation)
    steps = max(1, len(fit_index) // batch_size)

    def batches():
        # A galaxy has no preferred orientation: each batch turns and flips its patches (and moves
        # them, with config.shift).
        while True:
            order = rng.permutation(fit_index)
            for step in range(steps):
                take = order[step * batch_size : (step + 1) * batch_size]
                moved = shifted_views(patches[take], config.patch, rng)
                views = turned(moved, priors[take], int(rng.integers(4)), rng.random() < 0.5)
                yield views, labels[take]

    validation_data = ((central[validation], priors[validation]), labels[validation])
    history, best = fit_keeping_best(model, batches(), steps, epochs, validation_data, out / "verifier.keras")
    logits = best.predict((central[validation], priors[validation]), batch_size=1024, verbose=0).reshape(-1)
    summary = {
        "task": "verifier",
        "config": asdict(config),
        "detector": str(detector_path),
        "frames": str(frames),
        "centred_galaxies": None
        if centred_galaxies is None
        else {
            "folder": str(centred_galaxies),
            "shrinks": list(centred_shrinks),
            "part": "training",
            "real_galaxies": real_galaxies,
        },
        "candidates": len(labels),
        "galaxy_fraction": float(labels.mean()),
        "validation": {
            "candidates": int(validation.sum()),
            "auc": _auc(labels[validation], logits),
            "detector_auc": _auc(labels[validation], priors[validation, 0]),
        },
        "epochs": epochs,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    }
    (out / "verifier.json").write_text(json.dumps(summary, indent=1))
    chosen = rng.choice(fit_index, min(CALIBRATION_CANDIDATES, len(fit_index)), replace=False)
    np.savez_compressed(out / "calibration.npz", patches=central[chosen], priors=priors[chosen])
    np.savez_compressed(
        out / "validation.npz",
        patches=central[validation],
        priors=priors[validation],
        labels=labels[validation],
    )
    return summary


def fit_keeping_best(model, batches, steps: int, epochs: int, validation_data: tuple, target: Path):
    """model.fit on an endless generator of shuffled batches, keeping the epoch with the best validation
    loss at `target`: the fit's History and that best model (the verifier's and the box refiner's)."""
    import keras

    history = model.fit(
        batches,
        steps_per_epoch=steps,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=[keras.callbacks.ModelCheckpoint(target, monitor="val_loss", save_best_only=True)],
        shuffle=False,  # the generator shuffles
        verbose=2,
    )
    return history, keras.models.load_model(target)


def runtime_config(verifier: Verifier) -> VerifierConfig:
    """The harvest settings that give the candidates an exported verifier (edge.models.Verifier) sees
    at run time: the detector's from its candidate threshold, and its card's sky proposals."""
    proposals = verifier.sky_proposals
    return VerifierConfig(
        patch=verifier.patch,
        context=verifier.context,
        max_side=verifier.max_side,
        max_candidates=verifier.max_candidates,
        candidate_threshold=verifier.candidate_threshold,
        harvest_threshold=verifier.candidate_threshold,
        sky_proposals=None if proposals is None else asdict(proposals),
    )


DEFAULT_CONCENTRATION = ConcentrationMeasurement()  # new calibrations measure it (docs/verifier.md)
STAR_CONCENTRATION_QUANTILES = (0.01, 0.99)  # of the fitted frames': the range a card re-scores


def fit_psf_calibration(
    detector_path: Path,
    verifier_path: Path,
    frames: Path,
    measurement: PsfMeasurement | None = None,
    concentration: ConcentrationMeasurement | None = DEFAULT_CONCENTRATION,
) -> dict:
    """A verifier card's `verification.psf_calibration` (edge.psf): a quadratic logistic model of
    whether a candidate the runtime re-scores is a galaxy, given the exported verifier's logit, the
    box's size, the frame's PSF width and (unless `concentration` is None) the candidate's
    concentration over the frame's stars', fitted on a labelImg folder of frames the verifier never
    trained on (its own validation frames would flatter its logits). Candidates as the runtime verifies
    them: the detector's from the verifier's candidate threshold and the sky proposals, under its
    max_side, on frames whose PSF could be measured. The entry holds the fit's figures too."""
    from sklearn.linear_model import LogisticRegression

    from edge.models import Verifier
    from edge.psf import BASE_FEATURES, feature_count, psf_features

    measurement = measurement or PsfMeasurement()
    verifier = Verifier(verifier_path)
    data = harvest_candidates(
        detector_path, frames, runtime_config(verifier), psf=measurement, concentration=concentration
    )
    side_term = data["priors"][:, 1:3].max(axis=1) if len(data["labels"]) else np.zeros(0)
    usable = (side_term < np.log2(verifier.max_side) - 4) & (data["labels"] >= 0) & np.isfinite(data["psf"])
    star_range = None
    if concentration is not None:
        stars = data["star_concentration"]
        usable &= np.isfinite(stars)
        # Over the frames' stars (one value a frame): frames outside keep the verifier's own scores.
        known = np.isfinite(stars)
        per_frame = stars[known][np.unique(data["frames"][known], return_index=True)[1]]
        star_range = [float(q) for q in np.quantile(per_frame, STAR_CONCENTRATION_QUANTILES)]
    labels = data["labels"][usable].astype(np.int32)
    weights = feature_count(len(BASE_FEATURES) + (concentration is not None))
    if labels.sum() < weights or (labels == 0).sum() < weights:
        raise GalaxyEdgeError(f"{frames}: too few verified candidates of both kinds to fit a PSF calibration")
    priors, psf = data["priors"][usable], data["psf"][usable]
    logits = verifier.logits(data["patches"][usable], priors)
    concentrations = None
    if concentration is not None:
        concentrations = data["concentration"][usable] / data["star_concentration"][usable]
    features = psf_features(logits, priors, psf, concentrations)
    # Standardised for the solver, then folded back: the card holds weights of the raw features.
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-12
    model = LogisticRegression(C=1.0, max_iter=5000).fit((features - mean) / scale, labels)
    coefficients = model.coef_[0] / scale
    intercept = float(model.intercept_[0] - (coefficients * mean).sum())
    calibrated = features @ coefficients + intercept
    frame_psf = np.full(int(data["frames"].max()) + 1, np.nan)
    frame_psf[data["frames"]] = data["psf"]  # frames without candidates stay unmeasured
    measured = np.isfinite(frame_psf)
    quartiles = np.quantile(frame_psf[measured], [0.25, 0.5, 0.75])
    return {
        "intercept": intercept,
        "coefficients": [float(c) for c in coefficients],
        "measurement": asdict(measurement),
        "concentration": None if concentration is None else asdict(concentration),
        "star_concentration_range": star_range,
        "fitted_on": {
            "frames": str(frames),
            "frames_with_psf": f"{int(measured.sum())} of {len(frame_psf)}",
            "psf_fwhm_quartiles": [round(float(q), 2) for q in quartiles],
            "candidates": len(labels),
            "galaxies": int(labels.sum()),
            "auc_verifier": _auc(labels, logits),
            "auc_calibrated": _auc(labels, calibrated),
        },
    }


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def is_verifier(model_path: Path) -> bool:
    summary = Path(model_path).with_suffix(".json")
    return summary.is_file() and json.loads(summary.read_text()).get("task") == "verifier"
