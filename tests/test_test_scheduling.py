"""`make test`'s two processes: the modules of tests/conftest.py's XDIST_GROUPS stay in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO, xdist_scope

TOY_TEST = """
import os, time
from pathlib import Path

import pytest


@pytest.mark.parametrize("case", range(6))
def test_case(case):
    time.sleep(0.2)
    with open(os.environ["WORKER_LOG"], "a") as log:
        log.write(f"{Path(__file__).stem} {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def test_a_grouped_module_is_one_unit_and_others_go_test_by_test() -> None:
    assert xdist_scope("tests/test_pi_userland.py::test_run[a]") == "apt"
    assert xdist_scope("tests/test_serve_browser.py::test_round") == "apt"
    assert xdist_scope("tests/test_detection.py::test_x") == "tests/test_detection.py::test_x"


def test_two_workers_keep_a_grouped_module_in_one_process(tmp_path: Path) -> None:
    """Run under xdist in a subprocess: every test of a grouped module logs the same worker."""
    scheduler = "from tests.conftest import pytest_xdist_make_scheduler  # noqa: F401\n"
    (tmp_path / "conftest.py").write_text(scheduler)
    for name in ("test_pi_userland", "test_serve_browser", "test_detection", "test_annotations"):
        (tmp_path / f"{name}.py").write_text(TOY_TEST)
    log = tmp_path / "workers.log"
    environment = dict(os.environ, PYTHONPATH=str(REPO), WORKER_LOG=str(log))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    workers = defaultdict(set)
    for line in log.read_text().splitlines():
        module, worker = line.split()
        workers[module].add(worker)
    assert sum(len(w) for w in workers.values()) >= 4 and len(workers) == 4
    # The Pi userland and the browser test share a group ("apt"): one worker for both modules.
    assert len(workers["test_pi_userland"] | workers["test_serve_browser"]) == 1
    # The others are not held to that worker: both workers ran tests.
    assert len(set().union(*workers.values())) == 2
