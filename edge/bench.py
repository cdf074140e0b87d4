"""`galaxy-edge bench`: model latency distributions and the whole chain's per-stage latency,
against yardsticks measured in the same run with the same runtime and threads.

Absolute times drift on a shared machine; ratios to a yardstick measured minutes apart in
the same process do not, so every figure also comes as a ratio.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.interpreter import interpreter_module, load_interpreter, runtime_name
from edge.model_card import read_model_card

REPO = Path(__file__).resolve().parent.parent
REFERENCE_MODELS = REPO.parent / "shared" / "data" / "reference_models"
YARDSTICK_CACHE = REPO / ".cache" / "yardsticks"
SSD_YARDSTICK = "ssd_mobilenet_v2_300_int8.tflite"
CORAL_YARDSTICKS = {
    "coral_mobilenet_v2_1.0_224": "mobilenet_v2_1.0_224_quant.tflite",
    "coral_mobilenet_v1_0.25_128": "mobilenet_v1_0.25_128_quant.tflite",
}
# Published Pi figure that calibrates instructions to milliseconds: SSDLite MobileNetV2 300 int8, TFLite on
# a Raspberry Pi 4 CPU with 4 threads, 57 ms (the project's public anchor; same architecture and op mix as
# our SSD yardstick, 773 MMAC). Raspberry Pi 5: "two to three times the CPU performance" of a Pi 4
# (Raspberry Pi's Pi 5 announcement, 2023-09-28); the middle, 2.5, is used. A projection, not a measurement.
PI4_YARDSTICK_MS = 57.0
PI5_SPEEDUP = 2.5
# Published Coral Edge TPU figures for the same yardstick models (coral.ai/docs/edgetpu/benchmarks,
# table 1, USB Accelerator on a USB 3.0 desktop host): MobileNet v2 2.6 ms, MobileNet v2 SSD 7.2 ms.
# For int8 models that fit the Edge TPU's 8 MB of on-chip memory its time follows the
# multiply-accumulates (8.6 and 9.3 ns per MAC for those two), so ours are projected by MAC ratio to
# their yardstick. A projection: per-invoke USB overhead makes tiny models slower than this.
CORAL_USB_MS = {"ssd_mobilenet_v2_300": 7.2, "coral_mobilenet_v2_1.0_224": 2.6}
SSD = "ssd_mobilenet_v2_300"
# The chain's instruction count is taken on this real 1280x720 frame (hundreds of galaxies).
ICOUNT_FRAME = REPO / "samples" / "hubble_udf_crop_1280x720.jpg"


RESOLUTIONS = {"640x480": (640, 480), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}


@dataclass
class LatencyStats:
    runs: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float

    @staticmethod
    def of(samples_ms: Sequence[float]) -> LatencyStats:
        values = np.asarray(samples_ms, np.float64)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return LatencyStats(
            runs=len(values),
            min_ms=float(values.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            max_ms=float(values.max()),
            mean_ms=float(values.mean()),
            std_ms=float(values.std()),
        )


def time_calls(call: Callable[[], object], warmup: int, min_runs: int, seconds: float) -> list[float]:
    """Milliseconds per call after `warmup` untimed calls; at least min_runs, until `seconds`."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_runs or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
        if len(samples) >= 100_000:
            break
    return samples


def model_facts(interpreter) -> dict:
    """Parameters (constant tensors) and multiply-accumulates per invoke, from the ops' shapes.

    Counted by hand: no TFLite runtime exposes a MAC count. Conv: output elements x kernel
    area x input channels; depthwise: output elements x kernel area; fully connected: output
    elements x input features.
    """
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    produced = {int(i) for op in ops for i in op["outputs"]}
    inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    parameters, macs = 0, 0
    seen: set[int] = set()
    for op in ops:
        for i in op["inputs"]:
            i = int(i)
            if i >= 0 and i not in produced and i not in inputs and i not in seen:
                seen.add(i)
                parameters += int(np.prod(tensors[i]["shape"]))
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out_shape = tensors[int(op["outputs"][0])]["shape"]
        weights = tensors[int(op["inputs"][1])]["shape"]
        outputs = int(np.prod(out_shape))
        if name == "CONV_2D":  # weights: out_c, kh, kw, in_c
            macs += outputs * int(weights[1] * weights[2] * weights[3])
        elif name == "DEPTHWISE_CONV_2D":  # weights: 1, kh, kw, out_c
            macs += outputs * int(weights[1] * weights[2])
        else:  # weights: out, in
            macs += outputs * int(weights[1])
    return {"parameters": parameters, "macs": macs}


def bench_model(
    path: Path, threads: int, seconds: float, warmup: int = 10, min_runs: int = 30, kernels: str = "default"
) -> dict:
    """Invoke latency of one .tflite on random input, with its size, parameters and MACs."""
    interpreter = load_interpreter(path, threads, kernels=kernels)
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    if np.issubdtype(detail["dtype"], np.integer):
        info = np.iinfo(detail["dtype"])
        tensor = rng.integers(info.min, info.max, detail["shape"], endpoint=True).astype(detail["dtype"])
    else:
        tensor = rng.uniform(0, 255, detail["shape"]).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], tensor)
    samples = time_calls(interpreter.invoke, warmup, min_runs, seconds)
    stats = LatencyStats.of(samples)
    facts = model_facts(interpreter)
    data = Path(path).read_bytes()
    return {
        "path": str(path),
        "threads": threads,
        "input": [int(v) for v in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        **stats.__dict__,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest()[:16],
        **facts,
        "gmac_per_s": facts["macs"] / (stats.p50_ms / 1000) / 1e9 if stats.p50_ms else None,
        "samples_ms": samples,
    }


def ssd_yardstick() -> Path | None:
    """The standard SSD MobileNet V2 300x300 int8 (random weights: latency only), built once on
    a machine with TensorFlow by `python -m export.yardstick` (the bench itself never imports
    TensorFlow)."""
    path = YARDSTICK_CACHE / SSD_YARDSTICK
    return path if path.is_file() else None


def environment() -> dict:
    """What the figures were measured on."""
    info: dict = {
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line
        )
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        # x86 says "model name"; a Raspberry Pi says "Model" (the board) and "Hardware".
        info["cpu"] = fields.get("model name") or fields.get("model") or fields.get("hardware")
    except OSError:
        pass
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor.is_file():
        info["governor"] = governor.read_text().strip()
    temperature = Path("/sys/class/thermal/thermal_zone0/temp")
    if temperature.is_file():
        with contextlib.suppress(ValueError):
            info["temperature_c"] = int(temperature.read_text().strip()) / 1000
    module = interpreter_module()
    info["runtime"] = runtime_name(module)
    try:
        from importlib.metadata import version

        package = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(
            info["runtime"], "tensorflow"
        )
        info["runtime_version"] = version(package)
    except Exception:
        info["runtime_version"] = None
    return info


class ReplayCamera:
    """A capture device for LiveCapture that hands out the given frames at a camera's pace
    (cycling), so the chain benchmark sees real frame ages and drops."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float) -> None:
        self.frames, self.period = frames, 1.0 / fps
        self.index, self.next_time = 0, time.perf_counter()

    def read(self) -> tuple[bool, np.ndarray]:
        delay = self.next_time - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self.next_time = max(self.next_time + self.period, time.perf_counter() - self.period)
        frame = self.frames[self.index % len(self.frames)]
        self.index += 1
        return True, frame.copy()

    def release(self) -> None:
        pass


def frames_from(folder: Path, size: tuple[int, int], count: int = 4) -> list[np.ndarray]:
    """Frames of the given size cut from the images of a folder (resized to cover): the bundled
    real samples, or simulated frames made by `galaxy-edge simulate frames` (edge/ does not
    import the simulation)."""
    from galaxy_edge.files import IMAGE_SUFFIXES

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = []
    width, height = size
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or min(image.shape[:2]) < 200:
            continue
        scale = max(width / image.shape[1], height / image.shape[0])
        if scale > 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        frames.append(np.ascontiguousarray(image[:height, :width]))
        if len(frames) == count:
            break
    return frames


def bench_chain(
    detector_path: Path,
    classifier_path: Path,
    frames: Sequence[np.ndarray],
    threads: int,
    seconds: float,
    camera_fps: float = 30.0,
    tiles_per_frame: int | None = None,
    kernels: str = "default",
) -> dict:
    """The chain on a camera that delivers `frames` at camera_fps: per-stage latency, frames
    per second, frame age, dropped frames; and the back-to-back rate (`max_fps`)."""
    from edge.chain import Chain, ChainSettings, run
    from edge.models import Classifier, Detector
    from edge.sources import LiveCapture

    def make_chain() -> Chain:
        settings = ChainSettings(tiles_per_frame=tiles_per_frame)
        return Chain(
            Detector(detector_path, threads, kernels=kernels),
            Classifier(classifier_path, threads, kernels=kernels),
            settings,
        )

    chain = make_chain()
    for image in frames:  # warm-up: first invokes allocate and pack weights
        chain.process(_frame(image, 0))
    samples = time_calls(lambda: [chain.process(_frame(image, 0)) for image in frames], 0, 2, seconds / 3)
    max_fps = 1000 * len(frames) / statistics.median(samples)

    class Replay(LiveCapture):
        def _open(self):
            return ReplayCamera(frames, camera_fps)

    chain = make_chain()
    source = Replay("bench")
    count = max(10, int(seconds * camera_fps))
    with tempfile.TemporaryDirectory() as out:
        summary = run(chain, source, Path(out), max_frames=count)
    tiles = len(chain.rolling.tiles) if chain.rolling else None
    return {
        "frames": summary.frames,
        "tiles_per_frame": tiles_per_frame or "all",
        "field_refresh_frames": chain.rolling.refresh_frames if chain.rolling and tiles else 1,
        "camera_fps": camera_fps,
        "fps": summary.fps,
        "max_fps": max_fps,
        "dropped": summary.dropped,
        "p50_frame_age_ms": summary.frame_age_ms["p50_ms"],
        "p90_frame_age_ms": summary.frame_age_ms["p90_ms"],
        "galaxies_per_frame": summary.galaxies / max(len(frames), 1),
        "stages": summary.stages,
        **_total(summary.stages),
    }


def _total(stages: dict) -> dict:
    busy = [s for s in stages if s != "capture"]
    return {k: sum(stages[s][k] for s in busy) for k in ("p50_ms", "p90_ms", "p99_ms")}


def _frame(image: np.ndarray, index: int):
    from edge.sources import Frame

    return Frame(index, image, "bench", time.perf_counter())


def run_benchmark(
    detector: Path,
    classifier: Path,
    threads: Sequence[int],
    seconds: float,
    resolutions: Sequence[str],
    extra_models: dict[str, Path] | None = None,
    chain_threads: int | None = None,
    sim_frames: Path | None = None,
    use_ssd_yardstick: bool = True,
    progress: Callable[[str], None] = lambda _: None,
    tiles_per_frame: int = 4,
    kernels: str = "default",
) -> dict:
    """The whole benchmark as one JSON-ready dict (the shape the README documents); raw
    invoke samples per model are under "samples_ms" of each model entry (dropped from JSON)."""
    result: dict = {"environment": environment(), "models": {}, "chain": {}, "notes": []}
    result["environment"]["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["environment"]["kernels"] = kernels
    models = {"detector": detector, "classifier": classifier, **(extra_models or {})}
    yardsticks: dict[str, Path] = {}
    ssd = ssd_yardstick() if use_ssd_yardstick else None
    if ssd:
        yardsticks[SSD] = ssd
    else:
        result["notes"].append(
            f"SSD MobileNet V2 300 yardstick skipped: {YARDSTICK_CACHE / SSD_YARDSTICK} not built "
            "(`make yardstick` on a machine with TensorFlow; copy the file to a Pi)"
        )
    for name, file in CORAL_YARDSTICKS.items():
        if (REFERENCE_MODELS / file).is_file():
            yardsticks[name] = REFERENCE_MODELS / file
        else:
            result["notes"].append(f"{name} skipped: {REFERENCE_MODELS / file} not present")
    # Which yardstick each role is compared with.
    reference_of = {"detector": SSD, "classifier": "coral_mobilenet_v2_1.0_224"}
    for role in models:
        if role.startswith("detector"):
            reference_of.setdefault(role, SSD)
        elif role.startswith("classifier"):
            reference_of.setdefault(role, "coral_mobilenet_v2_1.0_224")
    for thread_count in threads:
        # Interleaved per thread count: a model and its yardstick are minutes apart at most.
        for role, path in {**models, **yardsticks}.items():
            if not Path(path).is_file():
                result["notes"].append(f"{role} skipped: {path} not found")
                continue
            progress(f"{role} at {thread_count} thread(s)")
            key = role if thread_count == threads[0] else f"{role}@{thread_count}t"
            result["models"][key] = {
                "role": role,
                **bench_model(Path(path), thread_count, seconds, kernels=kernels),
            }
    for key, entry in result["models"].items():
        reference = reference_of.get(entry["role"])
        suffix = key[len(entry["role"]) :]
        if reference and f"{reference}{suffix}" in result["models"]:
            base = result["models"][f"{reference}{suffix}"]
            entry["yardstick"] = reference
            entry["ratio_to_yardstick"] = entry["p50_ms"] / base["p50_ms"]
    result["projections"] = {"coral_usb_ms": coral_projection(result["models"])}
    for name in resolutions:
        size = RESOLUTIONS[name]
        sets = {"real": frames_from(REPO / "samples", size)}
        if sim_frames:
            sets["sim"] = frames_from(sim_frames, size)
        for kind, images in sets.items():
            if not images:
                result["notes"].append(f"{name} {kind}: no frames")
                continue
            # The live configuration (rolling tiles) and every tile of every frame.
            for per_frame, suffix in ((tiles_per_frame, ""), (None, "_all_tiles")):
                key = (name if kind == "real" else f"{name}_sim") + suffix
                progress(f"chain {key}")
                entry = bench_chain(
                    detector,
                    classifier,
                    images,
                    chain_threads or threads[0],
                    seconds,
                    tiles_per_frame=per_frame,
                    kernels=kernels,
                )
                entry["frames_kind"] = kind
                if SSD in result["models"]:
                    entry["yardstick"] = SSD
                    entry["ratio_to_yardstick"] = entry["p50_ms"] / result["models"][SSD]["p50_ms"]
                result["chain"][key] = entry
    return result


def coral_projection(models: dict) -> dict:
    """Projected Coral USB Accelerator ms per invoke for the int8 entries (first thread count)
    that have a yardstick with a published Coral figure: MACs x published ms / yardstick MACs."""
    projected = {}
    for key, entry in models.items():
        base = models.get(entry.get("yardstick", ""))
        if "@" in key or entry.get("dtype") != "int8" or base is None or not base.get("macs"):
            continue
        published = CORAL_USB_MS.get(entry["yardstick"])
        if published is not None:
            projected[key] = {"ms": entry["macs"] / base["macs"] * published, "yardstick": entry["yardstick"]}
    return projected


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# galaxy-edge bench: {env.get('cpu', env['machine'])}, {env['cores']} cores, "
        f"{env['runtime']} {env.get('runtime_version') or ''}",
        "",
        "| model | threads | p50 ms | p90 ms | p99 ms | min | max | std | MMAC | GMAC/s | KB | x yardstick |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, m in result["models"].items():
        ratio = f"{m['ratio_to_yardstick']:.3f} ({m['yardstick']})" if "ratio_to_yardstick" in m else ""
        lines.append(
            f"| {key} | {m['threads']} | {m['p50_ms']:.3f} | {m['p90_ms']:.3f} | {m['p99_ms']:.3f} | "
            f"{m['min_ms']:.3f} | {m['max_ms']:.3f} | {m['std_ms']:.3f} | {m['macs'] / 1e6:.1f} | "
            f"{(m['gmac_per_s'] or 0):.1f} | {m['size_bytes'] / 1024:.0f} | {ratio} |"
        )
    coral = result.get("projections", {}).get("coral_usb_ms", {})
    if coral:
        lines += ["", "Coral USB Accelerator, **projected** from MACs and Coral's published figures:"]
        lines += [f"- {key}: {c['ms']:.2f} ms (calibrated on {c['yardstick']})" for key, c in coral.items()]
    if result["chain"]:
        lines += [
            "",
            "| chain | tiles/frame | field refresh (frames) | fps (camera 30) | max fps | p50 ms | p90 ms | "
            "p99 ms | p90 frame age ms | dropped | x SSD yardstick |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, c in result["chain"].items():
            ratio = f"{c['ratio_to_yardstick']:.2f}" if "ratio_to_yardstick" in c else ""
            lines.append(
                f"| {key} | {c['tiles_per_frame']} | {c['field_refresh_frames']} | {c['fps']:.1f} | "
                f"{c['max_fps']:.1f} | {c['p50_ms']:.2f} | {c['p90_ms']:.2f} | "
                f"{c['p99_ms']:.2f} | {c['p90_frame_age_ms']:.1f} | {c['dropped']} | {ratio} |"
            )
        lines += ["", "Per-stage p50 / p90 ms:", ""]
        for key, c in result["chain"].items():
            stages = ", ".join(f"{s} {v['p50_ms']:.2f}/{v['p90_ms']:.2f}" for s, v in c["stages"].items())
            lines.append(f"- {key}: {stages}")
    if result.get("arm_icount"):
        lines += [
            "",
            "| arm64 instructions (emulated Pi userland) | millions | x yardstick | Pi 4 ms (projected) "
            "| Pi 5 ms (projected) |",
            "|---|---|---|---|---|",
        ]
        for key, c in result["arm_icount"].items():
            ratio = f"{c['ratio_to_yardstick']:.3f} ({c['yardstick']})" if "ratio_to_yardstick" in c else ""
            unit = "per frame" if "instructions_per_frame" in c else "per invoke"
            pi4 = f"{c['projected_ms_pi4']:.1f}" if "projected_ms_pi4" in c else ""
            pi5 = f"{c['projected_ms_pi5']:.1f}" if "projected_ms_pi5" in c else ""
            lines.append(f"| {key} ({unit}) | {_icount_value(c) / 1e6:.1f} | {ratio} | {pi4} | {pi5} |")
            for stage, value in c.get("stages", {}).items():
                lines.append(f"| {key}: {stage} | {value / 1e6:.1f} | | | |")
        chain = result["arm_icount"].get("chain_1280x720", {})
        if chain:
            twin = chain.get("whole_frame_twin")
            looks = (
                f"one invoke of the detector's whole-frame twin ({twin})"
                if twin
                else f"{chain['tiles']} detector tiles"
            )
            lines.append(
                f"\nThe chain's frame: {looks}"
                + _overview_words(
                    chain.get("detector_invokes", 0) - chain["tiles"], chain.get("overview_gated", False)
                )
                + ", "
                f"{chain.get('galaxies', chain['crops'])} galaxies, {chain['crops']} of them classified "
                "(the others under the classifier's resolution floor)."
            )
        if any("projected_ms_pi4" in c for c in result["arm_icount"].values()):
            lines.append(
                f"Projected ms: instructions x {PI4_YARDSTICK_MS:g} ms / the SSD yardstick's instructions "
                f"(its published Pi 4 figure, 4 threads); Pi 5 = Pi 4 / {PI5_SPEEDUP:g}. A projection."
            )
    lines += ["", *[f"Note: {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def save_histogram(result: dict, path: Path) -> Path | None:
    """Latency histograms of the models at the first thread count (matplotlib is optional on a Pi)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, entry in result["models"].items():
        if "@" not in name:
            axes.hist(entry["samples_ms"], bins=60, alpha=0.6, label=name, log=True)
    axes.set_xscale("log")
    axes.set(xlabel="invoke latency (ms)", ylabel="count", title="galaxy-edge bench")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --- reference files and regression checks (pycoral's style: per-device CSV with tolerances) ---

REFERENCE_FIELDS = ("key", "metric", "value", "tolerance")


def flatten(result: dict) -> dict[tuple[str, str], float]:
    """(entry, metric) -> value for the figures a reference file can pin."""
    values = {}
    for key, c in result.get("arm_icount", {}).items():
        metric = "instructions_per_frame" if "instructions_per_frame" in c else "instructions_per_invoke"
        values[(f"arm_icount.{key}", metric)] = c[metric]
        for stage, value in c.get("stages", {}).items():
            values[(f"arm_icount.{key}.{stage}", metric)] = value
    for key, m in result.get("models", {}).items():
        values[(f"models.{key}", "p50_ms")] = m["p50_ms"]
        if "ratio_to_yardstick" in m:
            values[(f"models.{key}", "ratio_to_yardstick")] = m["ratio_to_yardstick"]
    for key, c in result.get("chain", {}).items():
        values[(f"chain.{key}", "fps")] = c["fps"]
        values[(f"chain.{key}", "p90_frame_age_ms")] = c["p90_frame_age_ms"]
        if "ratio_to_yardstick" in c:
            values[(f"chain.{key}", "ratio_to_yardstick")] = c["ratio_to_yardstick"]
    return values


def write_reference(result: dict, path: Path, tolerance: float = 0.25) -> Path:
    """A reference CSV from a run: ratios get the tolerance, absolute times twice that."""
    rows = ["key,metric,value,tolerance"]
    for (key, metric), value in sorted(flatten(result).items()):
        slack = tolerance if metric == "ratio_to_yardstick" else 2 * tolerance
        if metric.startswith("instructions"):
            slack = 0.02  # deterministic: any real growth shows
        rows.append(f"{key},{metric},{value:.6g},{slack:.2f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def check_reference(result: dict, path: Path) -> list[str]:
    """Regressions against a reference CSV: a time or ratio above value x (1 + tolerance), or a
    frame rate below value x (1 - tolerance). Entries the run lacks are skipped."""
    import csv

    measured = flatten(result)
    problems = []
    with Path(path).open() as handle:
        for row in csv.DictReader(handle):
            key = (row["key"], row["metric"])
            if key not in measured:
                continue
            value, reference, tolerance = measured[key], float(row["value"]), float(row["tolerance"])
            if row["metric"] == "fps":
                if value < reference * (1 - tolerance):
                    problems.append(f"{row['key']} fps {value:.1f} < {reference:.1f} - {tolerance:.0%}")
            elif value > reference * (1 + tolerance):
                problems.append(
                    f"{row['key']} {row['metric']} {value:.3f} > {reference:.3f} + {tolerance:.0%}"
                )
    return problems


def without_samples(result: dict) -> dict:
    models = {k: {f: v for f, v in m.items() if f != "samples_ms"} for k, m in result["models"].items()}
    return {**result, "models": models}


def write_outputs(result: dict, json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(without_samples(result), indent=1))
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown(result))


def _icount_value(entry: dict) -> float:
    return entry.get("instructions_per_frame", entry.get("instructions_per_invoke", 0.0))


def _overview_words(invokes: int, gated: bool = False) -> str:
    """How the bench's report names the overview pass's invokes."""
    if gated:
        return " (the overview pass skipped: the twin proposed no box as large as overview_gate_side)"
    if invokes <= 0:
        return ""
    return " and the overview pass" + (f" ({invokes} invokes)" if invokes > 1 else "")


def chain_breakdown(detector: Path, classifier: Path, frame: Path, models: dict) -> dict:
    """Instructions per 1280x720 frame of the whole chain (every tile; every galaxy classified that is
    over the classifier's resolution floor), and its stages: detector and classifier invokes (count x
    per invoke), detection's own work (tiling, input lookup tables, decoding, NMS, tracking), the
    verification (when the detector's card names a verifier: decoding down to its candidate
    threshold, patches, invokes, re-scoring), the box refinement (when it names a box refiner:
    patches, invokes, deltas) and the crops' (cropping, resizing, softmax)."""
    from edge.icount import per_run

    whole, printed = per_run(["chain", str(detector), str(classifier), str(frame)], 1)
    detect_only, _ = per_run(["chain", str(detector), "none", str(frame)], 1)
    unrefined = unverified = detect_only
    if "box_refiner" in models:
        unrefined, _ = per_run(["chain-unrefined", str(detector), "none", str(frame)], 1)
    if "verifier" in models:
        unverified, _ = per_run(["chain-unverified", str(detector), "none", str(frame)], 1)
    pattern = r"TILES (\d+) INVOKES (\d+) OVERVIEW (\d+) GALAXIES (\d+) CROPS (\d+) TWIN (\d) GATED (\d)"
    tiles, invokes, overview, galaxies, crops, twin, gated = (
        int(v) for v in re.findall(pattern, printed)[-1]
    )
    # A frame of a whole-frame twin's size runs through the twin (one invoke) instead of the tiles; the
    # overview pass runs the detector itself.
    height, width = cv2.imread(str(frame)).shape[:2]
    network = f"detector_{width}x{height}" if twin else "detector"
    detector_invokes = (invokes - overview) * models[network]["instructions_per_invoke"]
    detector_invokes += overview * models["detector"]["instructions_per_invoke"]
    classifier_invokes = crops * models["classifier"]["instructions_per_invoke"]
    stages = {
        "detector_invokes": detector_invokes,
        "detection_tiling_decoding_nms_tracking": unverified - detector_invokes,
    }
    if "verifier" in models:
        stages["verification"] = unrefined - unverified
    if "box_refiner" in models:
        stages["box_refinement"] = detect_only - unrefined
    stages["classifier_invokes"] = classifier_invokes
    stages["cropping_resizing_softmax"] = whole - detect_only - classifier_invokes
    return {
        "instructions_per_frame": whole,
        "frame": str(frame),
        "tiles": tiles,
        "detector_invokes": invokes,
        "whole_frame_twin": network if twin else None,
        "overview_gated": bool(gated),
        "galaxies": galaxies,
        "crops": crops,
        "stages": stages,
    }


def arm_instruction_counts(
    detector: Path,
    classifier: Path,
    frame: Path,
    progress: Callable[[str], None] = lambda _: None,
    yardsticks: bool = True,
) -> dict:
    """arm64 instructions per invoke (models, and yardsticks unless told not) and per 1280x720 frame
    (the chain, with its stages), counted in the emulated Pi userland, with ratios to the yardsticks
    and a projection of Pi 4 and Pi 5 milliseconds calibrated on the SSD yardstick's published figure."""
    from edge.icount import per_run

    items = {"detector": detector, "classifier": classifier}
    card = read_model_card(detector)
    for companion in ("verifier", "box_refiner"):
        if card.raw.get(companion):
            items[companion] = Path(detector).parent / card.raw[companion]
    for name in card.raw.get("frame_models", []):  # whole-frame twins, per invoke
        height, width = load_interpreter(Path(detector).parent / name).get_input_details()[0]["shape"][1:3]
        items[f"detector_{width}x{height}"] = Path(detector).parent / name
    if yardsticks:
        ssd = ssd_yardstick()
        if ssd:
            items[SSD] = ssd
        for name, file in CORAL_YARDSTICKS.items():
            if (REFERENCE_MODELS / file).is_file():
                items[name] = REFERENCE_MODELS / file
    counts: dict = {}
    for name, path in items.items():
        progress(f"arm64 instructions: {name}")
        counts[name] = {"instructions_per_invoke": per_run(["model", str(path)], 3)[0]}
    progress("arm64 instructions: the chain on a 1280x720 frame, and without the classifier")
    counts["chain_1280x720"] = chain_breakdown(detector, classifier, frame, counts)
    reference = {"detector": SSD, "classifier": "coral_mobilenet_v2_1.0_224", "chain_1280x720": SSD}
    reference.update({name: SSD for name in items if name.startswith("detector_")})
    for name, base in reference.items():
        if base in counts:
            counts[name]["ratio_to_yardstick"] = _icount_value(counts[name]) / _icount_value(counts[base])
            counts[name]["yardstick"] = base
    if SSD in counts:
        ms_per_instruction = PI4_YARDSTICK_MS / counts[SSD]["instructions_per_invoke"]
        for entry in counts.values():
            entry["projected_ms_pi4"] = _icount_value(entry) * ms_per_instruction
            entry["projected_ms_pi5"] = entry["projected_ms_pi4"] / PI5_SPEEDUP
    return counts
