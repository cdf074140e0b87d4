"""Where a detector's arm64 instructions go: prefixes of its int8 network, counted.

    PYTHONPATH=. python scripts/probes/stage_icount.py models/galaxy_detector.keras FRAMES OUT

Each prefix (the input up to a backbone layer, then the whole network) is converted to int8
as `galaxy-edge export` would (calibrated on native-scale tiles of FRAMES) and counted per invoke
under the Pi userland (edge.icount); differences between successive prefixes are the stages'
costs, beside their multiply-accumulates (edge.bench.model_facts, from the ops' shapes). TFLite has no per-op
instruction counter, and x86 op profiles rank ops differently from
arm64's kernels, so prefixes are the deterministic way to split the count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="detector .keras (its .json config beside it)")
    parser.add_argument("frames", type=Path, help="frames for int8 calibration")
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--layers", default="", help="backbone layers, comma-separated (default: the taps; none: whole)"
    )
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--macs-only", action="store_true", help="only the multiply-accumulates (no counts)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import keras

    from detection.model import BACKBONE_FEATURES, DetectorConfig
    from edge.bench import model_facts
    from edge.icount import per_run
    from edge.interpreter import load_interpreter
    from export.detector import calibration_tiles
    from export.tflite import convert

    config = DetectorConfig.from_dict(json.loads(args.model.with_suffix(".json").read_text())["config"])
    model = keras.models.load_model(args.model, compile=False)
    backbone = model.get_layer("backbone")
    names = args.layers.split(",") if args.layers else list(BACKBONE_FEATURES[config.backbone].values())
    names = [] if args.layers == "none" else names
    tiles = None if args.macs_only else calibration_tiles(args.frames, config.input_size, args.calibration)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, previous, previous_macs = [], 0.0, 0
    for name in [*names, "whole network"]:
        if name == "whole network":
            prefix = model
        else:
            inner = keras.Model(backbone.input, backbone.get_layer(name).output)
            image = keras.Input(model.input_shape[1:], name="image")
            prefix = keras.Model(image, inner(model.get_layer("to_unit_range")(image)))
        path = args.out / f"{name.replace(' ', '_')}.tflite"
        instructions = 0.0
        if args.macs_only:  # float32 needs no calibration and has the same convolutions
            path.write_bytes(convert(prefix, "float32"))
        else:
            path.write_bytes(convert(prefix, "int8", tiles, count=len(tiles)))
            instructions, _ = per_run(["model", str(path)], args.runs)
        macs = model_facts(load_interpreter(path))["macs"]  # the benchmark's count, from the ops' shapes
        shape = "x".join(str(s) for s in prefix.output_shape[1:]) if name != "whole network" else "outputs"
        stage, stage_macs = instructions - previous, macs - previous_macs
        row = {"prefix": name, "output": shape, "instructions": instructions, "stage": stage}
        rows.append({**row, "stage_macs": stage_macs})
        print(
            f"{name:32s} {shape:12s} {instructions / 1e6:8.1f} M  stage {stage / 1e6:7.1f} M"
            f"  stage MACs {stage_macs / 1e6:6.2f} M"
        )
        previous, previous_macs = instructions, macs
    (args.out / "stages.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
