"""The front door: every verb has help with an example, runtime verbs never load TensorFlow,
and bad input gives a one-line reason with a non-zero exit."""

from __future__ import annotations

import argparse
import subprocess
import textwrap
from pathlib import Path

import pytest

from galaxy_edge.cli import build_parser
from tests.conftest import REPO

BLOCK_TRAINING_SIDE = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTrainingSide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "keras_tuner"):
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, BlockTrainingSide())
    """
)


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, child in subparsers[0].choices.items():
        yield from _leaf_parsers(child, (*prefix, name))


def test_every_verb_has_help_with_an_example() -> None:
    leaves = list(_leaf_parsers(build_parser()))
    assert {("run",), ("annotations", "check"), ("annotations", "propose")} <= {p for p, _ in leaves}
    for path, parser in leaves:
        help_text = parser.format_help()
        assert "example:" in help_text and "galaxy-edge " + " ".join(path) in help_text, path


def _python_with_blocked_training_side(python: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-c", BLOCK_TRAINING_SIDE + textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_runtime_verbs_and_edge_work_without_tensorflow(python: str) -> None:
    result = _python_with_blocked_training_side(
        python,
        """
        import sys
        try:
            import tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit("the import hook did not block tensorflow")
        import edge, edge.cli, edge.interpreter
        from galaxy_edge.cli import main
        try:
            main(["run", "--help"])
        except SystemExit as done:
            assert done.code == 0, done.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        assert not loaded, loaded
        print("ok")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: galaxy-edge run" in result.stdout and result.stdout.strip().endswith("ok")


def test_serve_plays_a_round_without_tensorflow(python: str) -> None:
    result = _python_with_blocked_training_side(
        python,
        """
        import sys, tempfile
        from pathlib import Path
        from edge.models import Classifier
        from edge.serve.app import create_app
        classifier = Classifier("models/galaxy10_classifier_int8.tflite")
        client = create_app(classifier, Path("samples/deck"), Path(tempfile.mkdtemp())).test_client()
        token = client.post("/api/round").get_json()["token"]
        answer = client.post("/api/answer", json={"token": token, "answer": "merging"}).get_json()
        assert client.get(answer["attention"]).status_code == 200
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        assert not loaded, loaded
        print("ok", answer["score"]["rounds"])
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok 1")


def test_console_script_runs(python: str) -> None:
    script = Path(python).with_name("galaxy-edge")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("galaxy-edge ")


def test_missing_model_names_the_path(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.tflite"
    code, _, err = run_cli("run", "--source", tmp_path, "--out", tmp_path / "o", "--detector", missing)
    assert code == 2 and f"model file not found: {missing}" in err and len(err.strip().splitlines()) == 1


def test_corrupt_model_names_the_path(run_cli, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"not a flatbuffer at all" * 10)
    code, _, err = run_cli("run", "--source", tmp_path, "--out", tmp_path / "o", "--detector", corrupt)
    assert code == 2 and f"{corrupt}: not a loadable TFLite model" in err


def test_unknown_verb_and_missing_arguments_exit_non_zero(run_cli) -> None:
    code, _, err = run_cli("frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = run_cli("annotations", "convert", "x")
    assert code == 2 and "required" in err


def test_bench_runs_without_tensorflow(python: str, tiny_models) -> None:
    result = _python_with_blocked_training_side(
        python,
        f"""
        import sys
        from galaxy_edge.cli import main
        code = main(["bench", "--detector", "{tiny_models["detector"]}", "--classifier",
                     "{tiny_models["classifier"]}", "--threads", "1", "--seconds", "0.05", "--resolutions",
                     "--no-float"])
        assert code == 0, code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        assert not loaded, loaded
        print("ok")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "| detector |" in result.stdout and result.stdout.strip().endswith("ok")
