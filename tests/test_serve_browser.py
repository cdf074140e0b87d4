"""The field demo page in a real headless browser: Debian's chromium driven by Playwright.

`galaxy-edge serve` runs as a user starts it (a subprocess, shipped models, bundled deck and
samples); the test plays a round with the class buttons and one with Galaxy Zoo's questions, answers a
round the server no longer holds (refused, a new round starts, nothing counted),
checks the score and the machine's answer, the sky panel and a phone-sized layout, and that
nothing was written outside the data folder. Set GALAXY_EDGE_SCREENSHOTS=docs to refresh the
screenshots in docs/. Chromium is installed with apt when missing (CI runs as root); where it
cannot be, the test is skipped saying why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "Debian's chromium is not installed and cannot be (apt-get as root): apt install chromium"
        )
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, env=environment)
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    found = shutil.which("chromium")
    if result.returncode != 0 or not found:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"could not install chromium with apt-get: {reason}")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def server(tmp_path: Path):
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "galaxy_edge",
            "serve",
            "--port",
            str(port),
            "--data",
            "data",
            "--interval",
            "1",
            "--source",
            str(REPO / "samples"),
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/config", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {process.stdout.read()}")
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=10)


def _screenshot(page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("GALAXY_EDGE_SCREENSHOTS", tmp_path))
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True, quality=80)


def _loaded(page, selector: str) -> None:
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=30_000,
    )


def test_a_visitor_plays_two_rounds_and_watches_the_sky(chromium: str, server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(server)

        # Round 1 with the class buttons.
        _loaded(page, "#galaxy")
        buttons = page.locator("#buttons button")
        assert buttons.count() == 10
        _loaded(page, "#buttons button img")
        _screenshot(page, tmp_path, "serve_game.jpg")
        buttons.nth(2).click()
        page.wait_for_selector("#reveal", state="visible")
        assert page.locator("#machine").inner_text().startswith("The machine said")
        assert page.locator("#truth").inner_text().startswith("It is:")
        assert page.locator("#probabilities li").count() == 5
        _loaded(page, "#attention")
        assert page.locator("#score").inner_text().endswith("1 round")
        _screenshot(page, tmp_path, "serve_answer.jpg")

        # Round 2 with Galaxy Zoo's questions: the first answer until a class is reached.
        page.click("#next")
        page.wait_for_selector("#reveal", state="hidden")
        page.check('input[value="guided"]')
        questions = []
        while not page.locator("#reveal").is_visible():
            questions.append(page.locator("#question").inner_text())
            page.locator("#answers button").first.click()
            page.wait_for_timeout(100)
        assert questions[0].startswith("Is the galaxy simply smooth") and len(questions) >= 2
        score = page.locator("#score").inner_text()
        assert score.endswith("2 rounds")
        you, machine = (int(part.split()[-1]) for part in score.split(" · ")[:2])
        assert 0 <= you <= 2 and 0 <= machine <= 2

        # A round the server no longer holds (another tab asked for a new one): refused, a new round starts.
        page.click("#next")
        page.check('input[value="buttons"]')
        page.evaluate("fetch('/api/round', {method: 'POST'})")
        page.locator("#buttons button").first.click()
        page.wait_for_function(
            "() => document.querySelector('#round-label').textContent.includes('new galaxy')"
        )
        assert "no such round" in page.locator("#round-label").inner_text()
        assert page.locator("#score").inner_text().endswith("2 rounds")  # nothing counted
        problems[:] = [p for p in problems if "409" not in p]  # that refusal was the point

        # The sky panel: the slideshow with the detector's boxes.
        page.click("#sky-tab")
        _loaded(page, "#sky-image")
        page.wait_for_function(
            "() => document.querySelector('#sky-status').textContent.includes('galaxies found')"
        )
        _screenshot(page, tmp_path, "serve_sky.jpg")

        # A phone: nothing wider than the screen.
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(server)
        _loaded(phone, "#galaxy")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        _screenshot(phone, tmp_path, "serve_phone.jpg")
        browser.close()

    assert problems == []  # no script errors, no blocked (external) loads
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [w for w in written if not w.startswith("serve_")] == ["data/rounds.csv"]
    assert len((tmp_path / "data" / "rounds.csv").read_text().splitlines()) == 3
