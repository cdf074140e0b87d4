"""Ad hoc probe (docs/verifier.md, The frame's seeing): how well edge.psf measures each frame's PSF
width, and what knowing it could add to the verifier.

On a `simulate frames` folder (truth.csv has each frame's psf_fwhm): the correlation of the measured
width with the truth and the quartiles of their ratio. With --auc DETECTOR (its card's verifier), for
the candidates the runtime verifies under 32 pixels: the verifier's ROC-AUC alone, and cross-validated
by frame (5 folds) that of a quadratic logistic model (edge.psf.psf_features) on its logit and the
box's size without a PSF width, with the measured width, with the true one, and with the measured
width and each candidate's concentration over its frame's stars' (edge.psf.source_concentration). On
image files (real frames): each one's width and its stars' concentration.

  PYTHONPATH=. python scripts/probes/psf_width.py FRAMES [--frames N] [--auc DETECTOR.tflite]
  PYTHONPATH=. python scripts/probes/psf_width.py IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from annotations.dataset import usable_pairs
from edge.proposals import SkyProposalSettings, sky_sources
from edge.psf import ConcentrationMeasurement, PsfMeasurement, psf_features


def true_widths(frames: Path) -> dict[str, float]:
    with open(frames / "truth.csv", newline="") as handle:
        return {row["frame"]: float(row["psf_fwhm"]) for row in csv.DictReader(handle)}


def cross_validated_auc(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    predicted = np.zeros(len(labels))
    for fit, held in GroupKFold(5).split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        predicted[held] = model.fit(features[fit], labels[fit]).predict_proba(features[held])[:, 1]
    return float(roc_auc_score(labels, predicted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", type=Path, nargs="+", help="a simulate-frames folder, or image files")
    parser.add_argument("--frames", dest="count", type=int, default=None, help="only the first N frames")
    parser.add_argument("--auc", type=Path, metavar="DETECTOR", help="also the verifier's ranking with it")
    args = parser.parse_args()
    if not args.frames[0].is_dir():
        for image in args.frames:
            frame = cv2.imread(str(image))
            if frame is None:
                raise SystemExit(f"{image}: cannot read the image")
            sources = sky_sources(frame, SkyProposalSettings(), PsfMeasurement())
            stars = sources.star_concentration(ConcentrationMeasurement())
            print(
                f"{image}: {frame.shape[1]}x{frame.shape[0]}, PSF FWHM {sources.psf_fwhm:.2f} px, "
                f"its stars' concentration {stars:.3f}"
            )
        return
    args.frames = args.frames[0]
    truth = true_widths(args.frames)
    pairs = usable_pairs(args.frames)[: args.count]
    measured = np.array(
        [
            sky_sources(cv2.imread(str(image)), SkyProposalSettings(), PsfMeasurement()).psf_fwhm
            for image, _ in pairs
        ]
    )
    true = np.array([truth[image.stem] for image, _ in pairs])
    ok = np.isfinite(measured)
    ratio = np.percentile(measured[ok] / true[ok], [10, 25, 50, 75, 90])
    print(
        f"{ok.sum()} of {len(pairs)} frames measured; correlation with the true FWHM "
        f"{np.corrcoef(measured[ok], true[ok])[0, 1]:.3f}; measured / true at 10/25/50/75/90 %: "
        + ", ".join(f"{r:.2f}" for r in ratio)
    )
    if args.auc is None:
        return
    import tempfile

    from sklearn.metrics import roc_auc_score

    from detection.verifier import harvest_candidates, runtime_config
    from edge.models import Detector

    verifier = Detector(args.auc).verifier
    if verifier is None:
        raise SystemExit(f"{args.auc}: its card names no verifier")
    config = runtime_config(verifier)
    with tempfile.TemporaryDirectory() as folder:  # the first N frames only
        for image, _ in pairs:
            for path in (image, image.with_suffix(".xml")):
                (Path(folder) / path.name).symlink_to(path.resolve())
        data = harvest_candidates(
            args.auc, Path(folder), config, psf=PsfMeasurement(), concentration=ConcentrationMeasurement()
        )
    small = (data["priors"][:, 1:3].max(axis=1) < np.log2(verifier.max_side) - 4) & (data["labels"] >= 0)
    priors, labels, groups = data["priors"][small], data["labels"][small], data["frames"][small]
    logits = verifier.logits(data["patches"][small], priors)
    frame_truth = true[groups]
    widths = np.where(np.isfinite(data["psf"][small]), data["psf"][small], np.nanmedian(measured))
    stars = data["star_concentration"][small]
    star_concentration = np.where(np.isfinite(stars), stars, np.nanmedian(stars))
    scores = {
        "without the PSF width": psf_features(logits, priors, 4.0),  # log2(4 / 4) = 0: its terms vanish
        "with the measured width": psf_features(logits, priors, widths),
        "with the true width": psf_features(logits, priors, frame_truth),
        "with the measured width and the concentration over the stars'": psf_features(
            logits, priors, widths, data["concentration"][small] / star_concentration
        ),
    }
    print(
        f"{len(labels)} candidates under {verifier.max_side:g} px ({int(labels.sum())} galaxies); ROC-AUC: "
        f"verifier {roc_auc_score(labels, logits):.4f}; quadratic model "
        + ", ".join(f"{name} {cross_validated_auc(x, labels, groups):.4f}" for name, x in scores.items())
    )


if __name__ == "__main__":
    main()
