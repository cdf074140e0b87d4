"""What the detector's input scaling costs and why it is not folded (docs/detector.md, "The overview gated
by the twin's candidates", found on the way):

1. arm64 instructions per invoke under the Pi userland of the detector's stem alone on a 1280x720 frame
   (a 3x3 convolution in 2-pixel steps to 16 channels, ReLU6; int8, untrained: the count does not depend
   on the weights): as it is, after the MUL and ADD of a Rescaling to -1..1, and in space-to-depth form
   (a 2x2 convolution over 12 channels);
2. the shipped detector's float whole-frame twin with the scaling folded into its first convolution and
   batch norm, against the twin as trained, on a random frame: exact but for the padded border.

    PYTHONPATH=. python scripts/probes/input_scaling.py OUT

About 3 minutes here. OUT keeps the int8 stems.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 720, 1280
INVOKE = """
import sys
import numpy as np
from tflite_runtime.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], np.int8))
interpreter.invoke()
for _ in range(int(sys.argv[2])):
    interpreter.invoke()
"""


def stems(out: Path) -> dict[str, Path]:
    import keras
    import tensorflow as tf
    from keras import layers

    from export.tflite import convert

    def stem(kind: str):
        image = keras.Input((HEIGHT, WIDTH, 3))
        x = image
        if kind == "rescaled":
            x = layers.Rescaling(1 / 127.5, offset=-1.0)(x)
        if kind == "space_to_depth":
            x = layers.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(x)
            x = layers.Conv2D(16, 2, padding="same")(x)
        else:
            x = layers.Conv2D(16, 3, strides=2, padding="same")(x)
        return keras.Model(image, layers.ReLU(6.0)(x))

    frames = np.random.default_rng(0).integers(0, 256, (8, HEIGHT, WIDTH, 3), dtype=np.uint8)
    paths = {}
    for kind in ("plain", "rescaled", "space_to_depth"):
        paths[kind] = out / f"stem_{kind}_int8.tflite"
        paths[kind].write_bytes(convert(stem(kind), "int8", frames, len(frames)))
    return paths


def instructions_per_invoke(model: Path, script: Path) -> float:
    tool = REPO.parent / "shared" / "tools" / "pi-userland" / "icount.sh"

    def count(invokes: int) -> int:
        result = subprocess.run(
            ["bash", str(tool), str(REPO / ".cache" / "pi-userland"), str(script), str(model), str(invokes)],
            capture_output=True, text=True, cwd=REPO, check=False,
        )  # fmt: skip
        match = re.search(r"ICOUNT (\d+)", result.stderr)
        if result.returncode != 0 or not match:
            raise SystemExit(f"icount failed for {model}: {result.stderr.strip()[-500:]}")
        return int(match.group(1))

    return (count(2) - count(0)) / 2


def folded_twin_difference() -> tuple[float, float]:
    """The largest and the 99.9th-percentile absolute difference of the float twin's outputs, folded
    against as trained."""
    import keras

    from export.detector import detector_summary, whole_frame_model

    source = REPO / "models" / "galaxy_detector.keras"
    trained = keras.models.load_model(source, compile=False)
    twin = whole_frame_model(trained, detector_summary(source), (HEIGHT, WIDTH))
    frame = np.random.default_rng(0).uniform(0, 255, (1, HEIGHT, WIDTH, 3)).astype(np.float32)

    def outputs() -> np.ndarray:
        found = twin(frame)
        values = [found[key] for key in sorted(found)] if isinstance(found, dict) else list(found)
        return np.concatenate([np.asarray(v).reshape(-1) for v in values])

    before = outputs()
    scaling = twin.get_layer("to_unit_range")
    backbone = twin.get_layer("backbone")
    conv, norm = backbone.get_layer("conv"), backbone.get_layer("conv_bn")
    kernel = conv.get_weights()[0]
    gamma, beta, mean, variance = norm.get_weights()
    # conv(K, s x + o) = conv(s K, x) + o sum(K) away from the padding: the batch norm's mean absorbs it.
    conv.set_weights([kernel * scaling.scale])
    norm.set_weights([gamma, beta, mean - scaling.offset * kernel.sum(axis=(0, 1, 2)), variance])
    scaling.scale, scaling.offset = 1.0, 0.0
    difference = np.abs(outputs() - before)
    return float(difference.max()), float(np.percentile(difference, 99.9))


def probe_folder(description: str) -> tuple[Path, Path]:
    """The command line's OUT folder, made, and the invoking script written into it (for
    instructions_per_invoke)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    script = out / "invoke.py"
    script.write_text(INVOKE)
    return out, script


def main() -> None:
    out, script = probe_folder(__doc__.split("\n\n")[0])
    for kind, path in stems(out).items():
        print(f"stem {kind}: {instructions_per_invoke(path, script) / 1e6:.1f} M per invoke", flush=True)
    largest, tail = folded_twin_difference()
    print(f"folded float twin, largest output difference {largest:.2f}, 99.9th percentile {tail:.2f}")


if __name__ == "__main__":
    sys.exit(main())
