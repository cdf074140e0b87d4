"""Detector evaluation through the edge runtime (the same decoding, tiling and merging that
runs on the device): COCO metrics with pycocotools, a precision-recall curve, drawn misses
and false positives, and the real-data checks (GZ2 central galaxies, a real sky frame).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detection.centred import centre_hits, centred_images, small_galaxy_recall
from edge.tiling import detect_frame
from galaxy_edge.errors import GalaxyEdgeError

MAP_SCORE_THRESHOLD = 0.05  # COCO practice: keep low-score detections for the PR curve


def map_threshold(detector) -> float:
    """The score down to which detections count for mAP. A verified detector's candidates are the
    detector's own down to the verifier's candidate threshold; all of them are kept, with the
    verifier's scores, so that verified and plain detector rank the same boxes."""
    return 0.0 if getattr(detector, "verifier", None) is not None else MAP_SCORE_THRESHOLD


def open_detector(
    model_path: Path,
    workdir: Path,
    verify: bool = True,
    box_refiner: Path | None = None,
    frame_models: Sequence[Path] = (),
):
    """An edge Detector for a .tflite (with its card) or a .keras from `train --detector`
    (converted to float32 TFLite in workdir first); with box_refiner, that one refines its boxes, and
    frame_models (whole-frame twins) take frames of their sizes."""
    from edge.models import Detector

    model_path = Path(model_path)
    if not model_path.is_file():
        raise GalaxyEdgeError(f"{model_path}: no such model")
    if model_path.suffix == ".keras":
        from export.detector import export_detector

        target = workdir / f"{model_path.stem}_float32.tflite"
        export_detector(model_path, target, "float32")
        model_path = target
    return Detector(model_path, verify=verify, box_refiner=box_refiner, frame_models=frame_models)


def coco_evaluation(detector, pairs: Sequence, labels: Sequence[str]) -> tuple[dict, list]:
    """COCO metrics over (image, annotation) pairs and the per-image detections."""
    per_image = []
    for image_path, _ in pairs:
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise GalaxyEdgeError(f"{image_path}: cannot read the image")
        per_image.append(detect_frame(detector, image))
    return coco_metrics(pairs, per_image, labels), per_image


def compare_on_frames(
    start: Path, trained: Path, pairs: Sequence, labels: Sequence[str], limit: int = 40
) -> dict:
    """mAP of the model a run started from and of the model it made, on the same annotated frames (at
    most `limit` of them), each as `evaluate --detector --no-verifier` scores it: a .keras through
    float32 TFLite, the detector's own scores. Tells a user whether fine-tuning on their frames helped."""
    pairs = list(pairs)[:limit]
    result: dict = {"frames": len(pairs), "images": [Path(image).name for image, _ in pairs]}
    with tempfile.TemporaryDirectory() as workdir:
        for name, model_path in (("start", start), ("trained", trained)):
            folder = Path(workdir) / name
            folder.mkdir()
            detector = open_detector(Path(model_path), folder, verify=False)
            detector.score_threshold = map_threshold(detector)
            metrics, _ = coco_evaluation(detector, pairs, labels)
            result[name] = {"model": str(model_path), "map50": metrics["map50"], "map": metrics["map"]}
    return result


def coco_metrics(pairs: Sequence, per_image: Sequence, labels: Sequence[str]) -> dict:
    """COCO metrics of per-image detections (edge Detections, in the pairs' order) against the pairs'
    annotations: so any subset of frames can be scored without detecting again."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from annotations.coco import to_coco

    annotations = [ann for _, ann in pairs]
    dataset = to_coco(annotations, list(labels))
    results = []
    for image_id, found in enumerate(per_image, start=1):
        for box, score, class_id in zip(found.boxes, found.scores, found.class_ids, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        found_coco = truth.loadRes(results) if results else None
        if found_coco is None:
            empty = {k: 0.0 for k in ("map", "map50", "map75", "ar1", "ar10", "ar100")}
            return {**empty, "pr_curve_iou50": [0.0] * 101}
        evaluation = COCOeval(truth, found_coco, "bbox")
        evaluation.params.maxDets = [1, 10, 100]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    s = evaluation.stats
    metrics = {
        "map": float(s[0]),
        "map50": float(s[1]),
        "map75": float(s[2]),
        "map_small": float(s[3]),
        "map_medium": float(s[4]),
        "map_large": float(s[5]),
        "ar1": float(s[6]),
        "ar10": float(s[7]),
        "ar100": float(s[8]),
        "ar_small": float(s[9]),
        "ar_medium": float(s[10]),
        "ar_large": float(s[11]),
    }
    # Precision at IoU 0.5 over the 101 recall points, all areas, 100 detections, first class.
    precision = evaluation.eval["precision"][0, :, 0, 0, 2]
    metrics["pr_curve_iou50"] = [float(v) for v in precision]
    # The score threshold with the best F1 at IoU 0.5: a default for the model card.
    recall = np.linspace(0, 1, len(precision))
    f1 = np.where(precision > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-9), 0)
    best = int(np.argmax(f1))
    metrics["best_f1_iou50"] = float(f1[best])
    metrics["best_f1_threshold"] = float(evaluation.eval["scores"][0, best, 0, 0, 2])
    metrics["best_f1_recall"] = float(recall[best])
    metrics["best_f1_precision"] = float(precision[best])
    return metrics


def save_pr_curve(precision: Sequence[float], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    recall = np.linspace(0, 1, len(precision))
    values = np.asarray(precision, float)
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.plot(recall[values >= 0], values[values >= 0])
    axes.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


@dataclass
class FrameMatch:
    """One frame's detections above a score threshold matched to its truth at IoU 0.5 (greedy, in
    score order; difficult boxes and stars are not truth)."""

    image_path: Path
    truth: list
    boxes: np.ndarray
    missed: list[int]  # indices into truth
    false: list[int]  # indices into boxes

    @property
    def errors(self) -> int:
        return len(self.missed) + len(self.false)


def match_frames(pairs: Sequence, per_image: Sequence, threshold: float) -> list[FrameMatch]:
    from annotations.records import Box

    matches = []
    for (image_path, ann), found in zip(pairs, per_image, strict=True):
        boxes = found.boxes[found.scores >= threshold]
        truth = [b for b in ann.boxes if not b.difficult and b.name != "star"]
        matched_truth, matched_found = set(), set()
        for i, t in enumerate(truth):
            for j, b in enumerate(boxes):
                if j not in matched_found and t.iou(Box("", *b.tolist())) >= 0.5:
                    matched_truth.add(i)
                    matched_found.add(j)
                    break
        missed = [i for i in range(len(truth)) if i not in matched_truth]
        false = [j for j in range(len(boxes)) if j not in matched_found]
        matches.append(FrameMatch(Path(image_path), truth, boxes, missed, false))
    return matches


# Bins of a truth box's longer side in pixels: COCO's small/medium/large split at 32 and 96 pixels
# of area side, too coarse for a sky where most galaxies span 8-64 pixels.
SIZE_BINS_PX = (0, 16, 32, 64, 128, 256)


def recall_by_size(matches: Sequence[FrameMatch]) -> list[dict]:
    """Recall at IoU 0.5 (at the matches' threshold) per bin of the truth box's longer side."""
    edges = [*SIZE_BINS_PX, np.inf]
    found = np.zeros(len(SIZE_BINS_PX), int)
    total = np.zeros(len(SIZE_BINS_PX), int)
    for match in matches:
        missed = set(match.missed)
        for i, t in enumerate(match.truth):
            k = int(np.searchsorted(edges, max(t.xmax - t.xmin, t.ymax - t.ymin), side="right")) - 1
            total[k] += 1
            found[k] += i not in missed
    rows = []
    for k, low in enumerate(SIZE_BINS_PX):
        high = edges[k + 1]
        label = f"{low}-{int(high)} px" if np.isfinite(high) else f">={low} px"
        rows.append(
            {
                "size": label,
                "count": int(total[k]),
                "recall": float(found[k] / total[k]) if total[k] else None,
            }
        )
    return rows


def draw_errors(matches: Sequence[FrameMatch], out: Path, count: int) -> list[Path]:
    """For the `count` frames with most errors: truth in green (missed: red), detections above
    the threshold in cyan (false positives: magenta)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for match in sorted(matches, key=lambda m: -m.errors)[:count]:
        image = cv2.imread(str(match.image_path), cv2.IMREAD_COLOR)
        for i, t in enumerate(match.truth):
            color = (0, 0, 255) if i in match.missed else (0, 200, 0)
            cv2.rectangle(image, (int(t.xmin), int(t.ymin)), (int(t.xmax), int(t.ymax)), color, 1)
        for j, b in enumerate(match.boxes):
            color = (255, 0, 255) if j in match.false else (255, 255, 0)
            cv2.rectangle(image, (int(b[0]) - 2, int(b[1]) - 2), (int(b[2]) + 2, int(b[3]) + 2), color, 1)
        target = out / f"{match.image_path.stem}_errors{match.errors}.jpg"
        cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        written.append(target)
    return written


def gz2_central_recall(detector, folder: Path, threshold: float) -> dict:
    """Real GZ2 check: the fraction of images with a detection that contains the image centre
    and has a plausible size, and the number of other detections per image."""
    paths = centred_images(folder)
    hits, others, missed = 0, 0, []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise GalaxyEdgeError(f"{path}: cannot read the image")
        height, width = image.shape[:2]
        found = detect_frame(detector, image)
        boxes = found.boxes[found.scores >= threshold]
        # The target: a box over the centre whose longer side spans 6-100 % of the image (one cell).
        centre = np.array([[width / 2, height / 2]], np.float32)
        if centre_hits(boxes, centre, max(width, height)).any():
            hits += 1
            others += len(boxes) - 1
        else:
            others += len(boxes)
            missed.append(path.name)
    return {
        "count": len(paths),
        "recall": hits / len(paths),
        "other_per_image": others / len(paths),
        "threshold": threshold,
        "missed_examples": missed[:20],
    }


def draw_sky_frame(detector, frame_path: Path, out: Path, threshold: float) -> dict:
    from galaxy_edge.draw import draw_boxes

    image = cv2.imread(str(frame_path), cv2.IMREAD_COLOR)
    if image is None:
        raise GalaxyEdgeError(f"{frame_path}: cannot read the image")
    found = detect_frame(detector, image)
    keep = found.scores >= threshold
    labels = [f"{s:.2f}" for s in found.scores[keep]]
    drawn = draw_boxes(image, found.boxes[keep], labels, [(255, 255, 0)] * len(labels))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), drawn, [cv2.IMWRITE_JPEG_QUALITY, 88])
    return {"frame": str(frame_path), "detections": int(keep.sum()), "drawn": str(out)}


def evaluate_detector(
    model_path: Path,
    data: Path | None,
    out: Path,
    gz2: Path | None = None,
    sky_frames: Sequence[Path] = (),
    score_threshold: float | None = None,
    draw: int = 6,
    verify: bool = True,
    box_refiner: Path | None = None,
    frame_models: Sequence[Path] = (),
) -> dict:
    from annotations.dataset import usable_pairs

    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": str(model_path)}
    with tempfile.TemporaryDirectory() as workdir:
        detector = open_detector(Path(model_path), Path(workdir), verify, box_refiner, frame_models)
        threshold = score_threshold if score_threshold is not None else detector.score_threshold
        report["score_threshold"] = threshold
        if detector.verifier is not None:
            report["verifier"] = str(detector.verifier.path)
        if detector.box_refiner is not None:
            report["box_refiner"] = str(detector.box_refiner.path)
        if detector.frame_models:
            report["frame_models"] = [str(twin.path) for twin in detector.frame_models.values()]
        if data:
            pairs = usable_pairs(data)
            detector.score_threshold = map_threshold(detector)
            print(f"evaluating on {len(pairs)} frames of {data}", file=sys.stderr)
            metrics, per_image = coco_evaluation(detector, pairs, detector.labels)
            report["coco"] = metrics
            report["data"] = {
                "source": str(data),
                "frames": len(pairs),
                "boxes": sum(len(ann.boxes) for _, ann in pairs),
            }
            save_pr_curve(metrics["pr_curve_iou50"], out / "pr_curve.png", f"{Path(model_path).name}")
            matches = match_frames(pairs, per_image, threshold)
            report["recall_by_size"] = recall_by_size(matches)
            if draw:
                report["drawn_errors"] = [str(p) for p in draw_errors(matches, out / "errors", draw)]
        detector.score_threshold = threshold
        if gz2:
            print(f"GZ2 central-galaxy check on {gz2}", file=sys.stderr)
            report["gz2_central"] = gz2_central_recall(detector, gz2, threshold)
            print(f"GZ2 small-galaxy check on {gz2}'s held-out part", file=sys.stderr)
            report["gz2_small"] = small_galaxy_recall(detector, gz2, threshold)
        report["sky_frames"] = [
            draw_sky_frame(detector, frame, out / f"{Path(frame).stem}_detections.jpg", threshold)
            for frame in sky_frames
        ]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report
