"""Shared fixtures: small images and labelImg files written by the tests themselves."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from xdist.remote import Producer
    from xdist.scheduler.protocol import Scheduling

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
GZ2_SAMPLES = sorted((REPO / "samples").glob("gz2_*.jpg"))  # real GZ2 images, each centred on its galaxy

# `make test` runs the suite in two processes (pytest-xdist, --dist loadgroup). Tests of one of these
# modules stay in one process: they share a module fixture that is costly to build twice, or (the Pi
# userland and the browser test) may install system packages with apt-get, which one process at a
# time may do.
XDIST_GROUPS = {
    "test_pi_userland": "apt",
    "test_serve_browser": "apt",
    "test_tflite_runtime_214": "tflite_runtime_214",
    "test_export": "export",
    "test_serve": "serve",
    "test_verifier": "verifier",
}


def xdist_scope(nodeid: str) -> str:
    """The unit a worker takes whole: a grouped module's group, or else the test alone."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return XDIST_GROUPS.get(module, nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> Scheduling | None:
    """--dist loadgroup by module, through xdist's scheduler hook. xdist_group marks do not work
    here: xdist 3.8 tags a marked test by rewriting `item._nodeid`, which pytest 9.2 no longer reads,
    so marked tests were spread over both workers (two Pi userland builds at once, one skipped)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return ModuleGroupScheduling(config, log)


# labelImg 1.8 output for one image, byte for byte (tabs, no XML declaration).
LABELIMG_XML = b"""<annotation verified="yes">
\t<folder>frames</folder>
\t<filename>frame_001.jpg</filename>
\t<path>/home/user/frames/frame_001.jpg</path>
\t<source>
\t\t<database>Unknown</database>
\t</source>
\t<size>
\t\t<width>64</width>
\t\t<height>48</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>galaxy</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox>
\t\t\t<xmin>10</xmin>
\t\t\t<ymin>12</ymin>
\t\t\t<xmax>30</xmax>
\t\t\t<ymax>40</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>star</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>1</truncated>
\t\t<difficult>1</difficult>
\t\t<bndbox>
\t\t\t<xmin>50</xmin>
\t\t\t<ymin>1</ymin>
\t\t\t<xmax>64</xmax>
\t\t\t<ymax>9</ymax>
\t\t</bndbox>
\t</object>
</annotation>
"""


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def labelimg_dir(tmp_path: Path) -> Path:
    """A clean labelImg folder: two images with XML beside them."""
    folder = tmp_path / "frames"
    write_image(folder / "frame_001.jpg")
    (folder / "frame_001.xml").write_bytes(LABELIMG_XML)
    write_image(folder / "frame_002.jpg", seed=1)
    second = LABELIMG_XML.replace(b"frame_001", b"frame_002").replace(b"<xmin>10</xmin>", b"<xmin>5</xmin>")
    (folder / "frame_002.xml").write_bytes(second)
    return folder


@pytest.fixture
def run_cli(capsys):
    """Run `galaxy-edge ARGS` in process; returns (exit code, stdout, stderr)."""
    from galaxy_edge.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny int8 detector (bright blobs) and classifier (dominant colour) with model cards."""
    pytest.importorskip("tensorflow")
    from tests.tiny_models import build_classifier, build_detector

    folder = tmp_path_factory.mktemp("tiny_models")
    return {"detector": build_detector(folder), "classifier": build_classifier(folder)}


def blob_frame(
    width: int, height: int, blobs: list[tuple[int, int, tuple[int, int, int]]], size: int = 8
) -> np.ndarray:
    """A black BGR frame with size x size squares of the given BGR colours at (x, y) top-left."""
    frame = np.zeros((height, width, 3), np.uint8)
    for x, y, color in blobs:
        frame[y : y + size, x : x + size] = color
    return frame
