"""Where a 1280x720 frame's verification goes, in arm64 instructions under the Pi userland: the
parts of `Detector.finish` and of decoding for the verifier, counted one by one on a detector's
whole-frame twin (docs/verifier.md, "A cheaper verifier"), and the sky pass's own parts.

    PYTHONPATH=. python scripts/probes/verification_icount.py [MODELS_DIR] [FRAME]

MODELS_DIR holds galaxy_detector_int8.tflite whose card names a verifier and a twin for the frame's
size (default models/). Each part runs once untimed, then twice more: (count with 2 - count with 0) / 2.
The script runs itself inside the userland (`--part PART`); about 6 minutes here.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = (
    "decode_0.20",
    "decode_0.35",
    "voting",
    "nms",
    "sky",
    "patches",
    "verifier_invokes",
    "concentrations",
    # The sky pass's own parts (edge.proposals.sky_sources), as it runs them:
    "sky_gray",  # the frame to float gray
    "sky_background",  # the mesh's medians and their interpolation, subtracted
    "sky_blur",  # the matched filter
    "sky_noise",  # the filtered frame's robust sigma, on a sample
    "sky_regions",  # the low threshold and connected components with their stats
    "sky_peaks",  # which regions peak above the high threshold
    "sky_psf",  # the PSF width from the bright regions (edge.psf.psf_stars)
)


def run_part(models: Path, frame_path: str, part: str, count: int) -> None:
    """Inside the userland: one part of the verification, `count` times after one untimed pass."""
    import cv2
    import numpy as np

    from edge.models import Detector, _voted_boxes, candidate_patches, candidate_priors, decode_center_deltas
    from edge.proposals import SAMPLE_STEP, sky_background
    from edge.psf import psf_stars
    from edge.tiling import detect_overview, merge_tiles, replaced_by_overview

    cv2.setNumThreads(0)
    detector = Detector(models / "galaxy_detector_int8.tflite", 1)
    frame = cv2.imread(frame_path)
    twin = detector.frame_models[frame.shape[:2]]
    verifier = detector.verifier
    outputs = [o.copy() for o in twin.invoke(twin.preprocess(frame))]
    found = detector._decode_ssd(outputs, twin)
    overview, cut = detect_overview(detector, frame, twin.overview_min_side, twin.overview_shrink)
    parts = replaced_by_overview([(found, np.zeros(len(found), bool))], overview, twin.overview_min_side)
    sky = detector.sky(frame)
    candidates = detector.with_proposals(merge_tiles([*parts, (overview, cut)], detector.iou_threshold), sky)
    sides = np.maximum(*(candidates.boxes[:, 2:] - candidates.boxes[:, :2]).T)
    chosen = np.flatnonzero(sides < verifier.max_side)[: verifier.max_candidates]
    boxes, scores = candidates.boxes[chosen], candidates.scores[chosen]
    patches, priors = (
        candidate_patches(frame, boxes, verifier.patch, verifier.context),
        candidate_priors(boxes, scores),
    )
    # The twin's raw candidates at 0.20, as decoding hands them to NMS and box voting.
    logits = outputs[twin.decoding.outputs["scores"]].reshape(-1)
    above = np.flatnonzero(logits >= np.log(0.2 / 0.8))
    raw = (
        decode_center_deltas(
            twin.anchors[above],
            outputs[twin.decoding.outputs["boxes"]].reshape(-1, 4)[above],
            twin.decoding.box_variance,
        )
        .clip(0, 1)
        .astype(np.float32)
    )
    raw_scores = (1 / (1 + np.exp(-logits[above]))).astype(np.float32)
    xywh = np.column_stack([raw[:, :2], raw[:, 2:] - raw[:, :2]])
    kept = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), raw_scores.tolist(), 0.0, 0.4), np.int64).reshape(-1)
    print(f"{len(above)} anchors at 0.20, {len(kept)} kept; {len(chosen)} verified", file=sys.stderr)
    settings, measurement = verifier.sky_proposals, verifier.psf_calibration.measurement
    gray = cv2.cvtColor(frame.astype(np.float32), cv2.COLOR_BGR2GRAY)
    residual = gray - sky_background(gray, settings.background_mesh)
    filtered = cv2.GaussianBlur(residual, (0, 0), settings.smoothing_sigma)
    sample = filtered[::SAMPLE_STEP, ::SAMPLE_STEP]
    noise = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    regions = (filtered > settings.low_sigma * noise).astype(np.uint8)
    regions_count, labels, stats, _ = cv2.connectedComponentsWithStats(regions, connectivity=8)
    for _ in range(count):
        if part == "decode_0.20":
            detector._decode_ssd(outputs, twin)
        elif part == "decode_0.35":
            detector.verifier = None
            detector._decode_ssd(outputs, twin)
            detector.verifier = verifier
        elif part == "voting":
            _voted_boxes(kept, raw, raw_scores, 0.4)
        elif part == "nms":
            cv2.dnn.NMSBoxes(xywh.tolist(), raw_scores.tolist(), 0.0, 0.4)
        elif part == "sky":
            detector.sky(frame)
        elif part == "patches":
            candidate_patches(frame, boxes, verifier.patch, verifier.context)
        elif part == "verifier_invokes":
            verifier.logits(patches, priors)
        elif part == "concentrations":
            sky.concentrations(boxes, verifier.psf_calibration.concentration)
        elif part == "sky_gray":
            cv2.cvtColor(frame.astype(np.float32), cv2.COLOR_BGR2GRAY)
        elif part == "sky_background":
            gray - sky_background(gray, settings.background_mesh)
        elif part == "sky_blur":
            cv2.GaussianBlur(residual, (0, 0), settings.smoothing_sigma)
        elif part == "sky_noise":
            sample = filtered[::SAMPLE_STEP, ::SAMPLE_STEP]
            float(np.median(np.abs(sample - np.median(sample))))
        elif part == "sky_regions":
            above_low = (filtered > settings.low_sigma * noise).astype(np.uint8)
            cv2.connectedComponentsWithStats(above_low, connectivity=8)
        elif part == "sky_peaks":
            peaked = np.zeros(regions_count, bool)
            peaked[labels[filtered > settings.high_sigma * noise]] = True
        elif part == "sky_psf":
            psf_stars(gray, residual, labels, stats, noise, measurement)


def count(models: Path, frame: str, part: str, runs: int) -> int:
    tool = REPO.parent / "shared" / "tools" / "pi-userland" / "icount.sh"
    arguments = [str(Path(__file__).resolve()), str(models), frame, "--part", part, "--runs", str(runs)]
    result = subprocess.run(
        ["bash", str(tool), str(REPO / ".cache" / "pi-userland"), *arguments],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=False,
    )  # fmt: skip
    match = re.search(r"ICOUNT (\d+)", result.stderr)
    if result.returncode != 0 or not match:
        raise SystemExit(f"icount failed for {part}: {result.stderr.strip()[-500:]}")
    if runs == 0:
        print(next(line for line in result.stderr.splitlines() if "anchors at" in line))
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="?", default=Path("models"))
    parser.add_argument("frame", nargs="?", default="samples/hubble_udf_crop_1280x720.jpg")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:  # inside the userland
        run_part(args.models, args.frame, args.part, args.runs)
        return
    base = count(args.models, args.frame, PARTS[0], 0)
    for part in PARTS:
        print(f"{part}: {(count(args.models, args.frame, part, 2) - base) / 2 / 1e6:.1f} M")


if __name__ == "__main__":
    main()
