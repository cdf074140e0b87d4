"""galaxy-edge bench: statistics, MAC counting, the JSON shape, reference checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.bench import LatencyStats, bench_model, check_reference, run_benchmark, time_calls, write_reference
from edge.interpreter import load_interpreter


def test_latency_statistics() -> None:
    stats = LatencyStats.of(list(range(1, 101)))
    assert stats.runs == 100 and stats.min_ms == 1 and stats.max_ms == 100
    assert stats.p50_ms == pytest.approx(50.5) and stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01) and stats.mean_ms == pytest.approx(50.5)
    calls = []
    samples = time_calls(lambda: calls.append(1), warmup=3, min_runs=7, seconds=0)
    assert len(samples) == 7 and len(calls) == 10  # warm-up calls are not timed


def test_mac_count_of_a_known_model(tiny_models) -> None:
    # The tiny classifier: a 16x16 stride-16 convolution over 64x64x3 to 4 channels, then a
    # 4 x 3 fully connected layer (tests/tiny_models.py).
    result = bench_model(tiny_models["classifier"], threads=1, seconds=0.05, warmup=1, min_runs=3)
    interpreter = load_interpreter(tiny_models["classifier"])
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert "CONV_2D" in ops and result["macs"] > 0 and result["parameters"] > 0
    assert result["p50_ms"] > 0 and len(result["samples_ms"]) >= 3


def test_coral_projection_scales_the_published_figure_by_macs() -> None:
    from edge.bench import coral_projection

    models = {
        "detector": {"dtype": "int8", "macs": 193.2e6, "yardstick": "ssd_mobilenet_v2_300"},
        "detector_float32": {"dtype": "float32", "macs": 193.2e6, "yardstick": "ssd_mobilenet_v2_300"},
        "detector@2t": {"dtype": "int8", "macs": 193.2e6, "yardstick": "ssd_mobilenet_v2_300"},
        "classifier": {"dtype": "int8", "macs": 30e6, "yardstick": "coral_mobilenet_v2_1.0_224"},
        "ssd_mobilenet_v2_300": {"dtype": "int8", "macs": 772.8e6},
    }
    projected = coral_projection(models)
    assert set(projected) == {"detector"}  # no float, no second thread count, no missing yardstick
    assert projected["detector"]["ms"] == pytest.approx(7.2 / 4)


def test_benchmark_json_shape_and_reference_check(tiny_models, tmp_path: Path, run_cli) -> None:
    result = run_benchmark(
        tiny_models["detector"],
        tiny_models["classifier"],
        threads=[1],
        seconds=0.2,
        resolutions=["640x480"],
        use_ssd_yardstick=False,
    )
    for role in ("detector", "classifier"):
        entry = result["models"][role]
        assert {"p50_ms", "p90_ms", "p99_ms", "macs", "size_bytes"} <= entry.keys()
    if (Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "reference_models").is_dir():
        assert "ratio_to_yardstick" in result["models"]["classifier"]
    for key in ("640x480", "640x480_all_tiles"):
        chain = result["chain"][key]
        assert {"fps", "p50_ms", "p90_ms", "p99_ms", "p90_frame_age_ms", "stages", "dropped"} <= chain.keys()
        assert chain["fps"] > 0 and "detect" in chain["stages"]
    assert result["environment"]["cores"] and result["environment"]["runtime"]

    reference = write_reference(result, tmp_path / "reference.csv")
    assert check_reference(result, reference) == []
    # A reference from a machine three times as fast is a regression here.
    rows = reference.read_text().splitlines()
    faster = [rows[0]] + [
        ",".join([k, m, str(float(v) / 3 if m != "fps" else float(v) * 3), t])
        for k, m, v, t in (r.split(",") for r in rows[1:])
    ]
    (tmp_path / "faster.csv").write_text("\n".join(faster) + "\n")
    problems = check_reference(result, tmp_path / "faster.csv")
    assert any("models.detector p50_ms" in p for p in problems) and any("fps" in p for p in problems)

    code, out, _ = run_cli(
        "bench", "--detector", tiny_models["detector"], "--classifier", tiny_models["classifier"],
        "--threads", "1", "--seconds", "0.1", "--resolutions", "--json", tmp_path / "b.json",
        "--check", tmp_path / "faster.csv",
    )  # fmt: skip
    assert code == 1 and "regression" in out
    saved = json.loads((tmp_path / "b.json").read_text())
    assert "samples_ms" not in saved["models"]["detector"] and saved["chain"] == {}
    assert (tmp_path / "b.md").read_text().startswith("# galaxy-edge bench")
    assert np.isfinite(saved["models"]["detector"]["p50_ms"])


def test_instruction_reference_names_the_stage_that_grew(tmp_path: Path) -> None:
    stages = {"detector_invokes": 2.0e9, "classifier_invokes": 1.0e9}
    counts = {
        "detector": {"instructions_per_invoke": 1.5e8},
        "chain_1280x720": {"instructions_per_frame": 3.0e9, "stages": stages},
    }
    reference = write_reference({"arm_icount": counts}, tmp_path / "ref.csv")
    assert "arm_icount.chain_1280x720.detector_invokes,instructions_per_frame,2e+09,0.02" in (
        reference.read_text()
    )
    same = {"arm_icount": json.loads(json.dumps(counts))}
    assert check_reference(same, reference) == []
    grown = json.loads(json.dumps(counts))
    grown["chain_1280x720"]["stages"]["classifier_invokes"] *= 1.03  # 3%: over the 2% tolerance
    grown["detector"]["instructions_per_invoke"] *= 1.01  # 1%: within it
    problems = check_reference({"arm_icount": grown}, reference)
    assert len(problems) == 1 and problems[0].startswith("arm_icount.chain_1280x720.classifier_invokes")
