"""The overview beside a whole-frame twin, varied in its card: mAP of a candidate folder's pair with its
twin's `overview_min_side` (and `overview_shrink`) set to each value given, against the shipped pair,
on the same frames (docs/detector.md, "A twin of the finer levels"). Evaluated as `evaluate
--detector` scores mAP (every candidate kept).

    PYTHONPATH=. python scripts/probes/overview_variants.py CANDIDATE_DIR FRAMES --min-sides 48,64,96
        [--shrink 2|none] [--frame-size 1280x720]

CANDIDATE_DIR holds galaxy_detector_int8.tflite whose card names the twin for FRAME_SIZE (and, for a
shrunk overview in one invoke, the twin of the shrunk size: export --frame-size WxH --detector).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from annotations.dataset import usable_pairs
from detection.evaluate import coco_evaluation, coco_metrics, map_threshold, open_detector
from galaxy_edge.argtypes import number_list, width_height


def scored(detector_path: Path, pairs: list, workdir: Path) -> dict:
    detector = open_detector(detector_path, workdir)
    detector.score_threshold = map_threshold(detector)
    return coco_metrics(pairs, coco_evaluation(detector, pairs, ["galaxy"])[1], ["galaxy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", type=Path)
    parser.add_argument("frames", type=Path)
    parser.add_argument("--min-sides", type=number_list, required=True)
    parser.add_argument("--shrink", default=None, help="the twin card's overview_shrink: a number, or none")
    parser.add_argument("--frame-size", type=width_height, default=(1280, 720))
    args = parser.parse_args()
    pairs = usable_pairs(args.frames)
    width, height = args.frame_size
    with tempfile.TemporaryDirectory() as workdir:
        shipped = scored(Path("models/galaxy_detector_int8.tflite"), pairs, Path(workdir))
        print(f"shipped: {shipped['map50']:.4f} / {shipped['map']:.4f}", flush=True)
        for side in args.min_sides:
            folder = Path(workdir) / f"min{side:g}"
            shutil.copytree(args.candidate, folder)
            twin_card = folder / f"galaxy_detector_{width}x{height}_int8.json"
            card = json.loads(twin_card.read_text())
            card["decoding"]["overview_min_side"] = side
            if args.shrink is not None:
                card["decoding"]["overview_shrink"] = None if args.shrink == "none" else int(args.shrink)
            twin_card.write_text(json.dumps(card, indent=1))
            found = scored(folder / "galaxy_detector_int8.tflite", pairs, Path(workdir))
            print(
                f"min side {side:g}: {found['map50']:.4f} / {found['map']:.4f} "
                f"({found['map50'] - shipped['map50']:+.4f} / {found['map'] - shipped['map']:+.4f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
