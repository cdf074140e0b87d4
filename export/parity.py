"""Measure an exported detector's float32-int8 parity again under its current card: after a
change to the card's decoding (say its containment check), the figures `galaxy-edge export`
wrote into the cards and the export report describe a decoding the runtime no longer uses.

    python -m export.parity models/galaxy_detector_int8.tflite \
        --float32 models/galaxy_detector_float32.tflite --data data/det_test \
        [--evaluation E/report.json ...] [--fresh-evaluation F/report.json]

Both cards' top-level metrics and the int8 file's export report are rewritten; the rest of each card
(evaluations merged by export.ship, the verifier) is kept. `--evaluation` and `--fresh-evaluation`
merge `galaxy-edge evaluate --detector` reports of the int8 file into its card, as `make train` does
through export.ship (no Keras checkpoint needed here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export.detector import detector_parity, parity_metrics
from export.reports import write_report
from export.ship import merge_evaluation
from galaxy_edge.errors import GalaxyEdgeError


def refresh_parity(int8: Path, float32: Path, data: Path, count: int | None = None) -> dict:
    """Parity of the two files on `data` (first `count` frames), written into their cards and the
    int8 file's report; returns the parity."""
    cards = {name: path.with_suffix(".json") for name, path in (("int8", int8), ("float32", float32))}
    for path in (int8, float32, *cards.values()):
        if not path.is_file():
            raise GalaxyEdgeError(f"{path}: no such file")
    labels = json.loads(cards["int8"].read_text()).get("labels")
    if not labels:
        raise GalaxyEdgeError(f"{cards['int8']}: the card names no labels")
    parity = detector_parity({"int8": int8, "float32": float32}, data, count, labels)
    for name, card_path in cards.items():
        card = json.loads(card_path.read_text())
        shown = {"frames": parity["frames"], name: parity[name]}
        if name == "int8":
            shown["float32"] = parity["float32"]
        card.setdefault("metrics", {}).update(parity_metrics(shown, data))
        card_path.write_text(json.dumps(card, indent=1))
    report_path = int8.with_name(int8.stem + "_report.json")
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"model": str(int8)}
    report["parity"] = {"frames": parity["frames"], "float32": parity["float32"], "int8": parity["int8"]}
    write_report(report, report_path)
    return parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("int8", type=Path, help="the int8 detector (.tflite with its card)")
    parser.add_argument("--float32", type=Path, required=True, help="its float32 twin")
    parser.add_argument("--data", type=Path, required=True, help="labelled frames (the export's --data)")
    parser.add_argument("--count", type=int, default=None, help="only the first COUNT frames")
    parser.add_argument(
        "--evaluation", type=Path, action="append", default=[], help="evaluate reports, merged in order"
    )
    parser.add_argument("--fresh-evaluation", type=Path, help="an evaluate report on a large fresh set")
    args = parser.parse_args(argv)
    reports = [*args.evaluation, *([args.fresh_evaluation] if args.fresh_evaluation else [])]
    for report in reports:  # before measuring anything
        if not report.is_file():
            raise GalaxyEdgeError(f"{report}: no such evaluation report")
    parity = refresh_parity(args.int8, args.float32, args.data, args.count)
    card = args.int8.with_suffix(".json")
    for report in args.evaluation:
        merge_evaluation(card, report)
    if args.fresh_evaluation:
        merge_evaluation(card, args.fresh_evaluation, key="simulated_fresh_frames")
    print(
        "; ".join(
            f"{k}: mAP@0.5 {parity[k]['map50']:.4f}, mAP@0.5:0.95 {parity[k]['map']:.4f}"
            for k in ("float32", "int8")
        )
        + f" on {parity['frames']} frames"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
