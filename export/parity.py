"""Measure an exported detector's float32-int8 parity again under its current card: after a
change to the card's decoding (say its containment check), the figures `galaxy-edge export`
wrote into the cards and the export report describe a decoding the runtime no longer uses.

    python -m export.parity models/galaxy_detector_int8.tflite \
        --float32 models/galaxy_detector_float32.tflite --data data/det_test

Both cards' top-level metrics and the int8 file's export report are rewritten; the rest of each card
(evaluations merged by export.ship, the verifier) is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export.detector import detector_parity, parity_metrics
from export.reports import write_report
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
    args = parser.parse_args(argv)
    parity = refresh_parity(args.int8, args.float32, args.data, args.count)
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
