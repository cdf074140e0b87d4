"""Deterministic arm64 instruction counts of the runtime, under the emulated Raspberry Pi OS
userland (../shared/tools/pi-userland): a figure that machine noise cannot move.

A probe (this module run as a script inside the userland) loads a model or the whole chain,
warms it up, then runs it K times; the count of a run with K minus the count of a run with 0
is the cost of K invokes or frames, start-up and warm-up excluded.

    python -m edge.icount model PATH K
    python -m edge.icount chain DETECTOR CLASSIFIER|none FRAME K
    python -m edge.icount chain-unverified DETECTOR none FRAME K   (the verifier its card names left out)
    python -m edge.icount chain-unrefined DETECTOR none FRAME K    (the box refiner its card names left out)
    python -m edge.icount proposals FRAME K
    python -m edge.icount overview DETECTOR contain|cover FRAME K

The chain classifies every galaxy on every frame (those over the classifier card's resolution floor;
smaller ones are "unresolved", as `galaxy-edge run` leaves them) and detects over every tile (the full
frame at native scale): the cold cost of a new field, not the live view's steady state.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PI_TOOLS = REPO.parent / "shared" / "tools" / "pi-userland"
PI_DIR = REPO / ".cache" / "pi-userland"


def _probe(argv: list[str]) -> None:
    import numpy as np

    mode, *rest = argv
    if mode == "model":
        from edge.interpreter import load_interpreter

        path, count = rest[0], int(rest[1])
        interpreter = load_interpreter(path, 1)
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()  # warm-up: allocation and weight packing
        for _ in range(count):
            interpreter.invoke()
    elif mode == "proposals":  # the sky proposals' filters and regions on one frame (edge.proposals)
        import cv2

        from edge.proposals import SkyProposalSettings, sky_proposals

        cv2.setNumThreads(0)  # as for the chain, below
        image, settings = cv2.imread(rest[0]), SkyProposalSettings()
        sky_proposals(image, settings)  # warm-up
        for _ in range(int(rest[1])):
            sky_proposals(image, settings)
    elif mode == "overview":  # the detector's overview pass on one frame (edge.tiling.detect_overview)
        import cv2

        from edge.models import Detector
        from edge.tiling import detect_overview

        cv2.setNumThreads(0)  # as for the chain, below
        detector, image = Detector(rest[0], 1, verify=False), cv2.imread(rest[2])
        detector.overview_fit = rest[1]  # "contain" or "cover", whatever the card says
        detector.overview_min_side = detector.overview_min_side or 1
        detect_overview(detector, image)  # warm-up
        for _ in range(int(rest[3])):
            detect_overview(detector, image)
    else:
        import cv2

        # OpenCV's worker threads (the sky proposals' filters on a whole frame use them) spin for a
        # varying number of instructions under emulation; one thread counts the work alone.
        cv2.setNumThreads(0)
        from edge.chain import Chain, ChainSettings
        from edge.models import Classifier, Detector
        from edge.sources import Frame
        from edge.tiling import needs_tiling, tile_layout

        detector_path, classifier_path, frame_path, count = rest[0], rest[1], rest[2], int(rest[3])
        image = cv2.imread(frame_path)
        detector = Detector(detector_path, 1, verify=mode != "chain-unverified")
        if mode == "chain-unrefined":
            detector.box_refiner = None
        classifier = Classifier(classifier_path, 1) if classifier_path != "none" else None
        chain = Chain(detector, classifier, ChainSettings(reclassify_every=1))
        # The detector networks' invokes, counted on the warm-up frame (the same frame as the counted
        # ones): the overview pass beside a twin may be gated by the twin's candidates (its card's
        # overview_gate_side), so whether it ran is read, not assumed. (Without the verifier the twin
        # decodes fewer candidates, so its gate can only close more often: a frame whose gate opens
        # only with the verifier puts the overview's cost in the breakdown's verification.)
        networks = [detector, *detector.frame_models.values()]
        invoked = _count_invokes(networks)
        result = chain.process(Frame(0, image, "icount", 0.0))
        for network in networks:
            del network.invoke  # back to the class's method: the counted frames pay no wrapper
        for index in range(count):
            chain.process(Frame(index + 1, image, "icount", 0.0))
        tiled = needs_tiling(detector, image.shape)
        tiles = len(tile_layout(detector, image.shape)) if tiled else 1
        twin = detector.frame_models.get(image.shape[:2])  # one invoke of the whole-frame twin
        # Beyond the tiles (or the twin's one invoke): the card's overview pass, when it ran.
        invokes = sum(invoked.values())
        overview = invokes - tiles
        gate = twin.overview_gate_side if twin is not None and not tiled and twin.overview_min_side else None
        gated = int(gate is not None and overview == 0)  # the twin proposed nothing as large as the gate
        # What the frame cost is made of, for the caller's breakdown (stdout; the count is on stderr).
        classified = sum(t.classifications > 0 for t in result.tracks) if classifier else 0
        galaxies = len(result.detections)
        print(
            f"TILES {tiles} INVOKES {invokes} OVERVIEW {overview} GALAXIES {galaxies} CROPS {classified} "
            f"TWIN {int(twin is not None)} GATED {gated}"
        )


def _count_invokes(models: list) -> dict[int, int]:
    """Counts of each model's invokes from here on, by position in models (an instance attribute
    over the method; `del model.invoke` restores it)."""
    counts = dict.fromkeys(range(len(models)), 0)
    for index, model in enumerate(models):

        def counted(*args, index=index, original=model.invoke, **kwargs):
            counts[index] += 1
            return original(*args, **kwargs)

        model.invoke = counted
    return counts


def count_instructions(arguments: list[str], pi_dir: Path = PI_DIR) -> tuple[int, str]:
    """Instructions of `python -m edge.icount ARGUMENTS` in the userland (built if missing), and
    what the probe printed."""
    build, icount = PI_TOOLS / "build.sh", PI_TOOLS / "icount.sh"
    if not icount.is_file():
        raise FileNotFoundError(f"{icount}: the Pi userland tool is not here")
    if not (pi_dir / "python3").exists():
        environment = dict(os.environ, PIP=f"{sys.executable} -m pip")
        subprocess.run(
            ["bash", str(build), str(pi_dir), "pip"], check=True, env=environment, capture_output=True
        )
    result = subprocess.run(
        ["bash", str(icount), str(pi_dir), "-m", "edge.icount", *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="0"),
        timeout=3600,
        check=False,
    )
    match = re.search(r"ICOUNT (\d+)", result.stderr)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"icount failed: {result.stderr.strip().splitlines()[-3:]}")
    return int(match.group(1)), result.stdout


def per_run(arguments_with_count: list[str], runs: int) -> tuple[float, str]:
    """Instructions per invoke or frame, (count with `runs` - count with 0) / runs, and what the
    probe printed."""
    with_runs, printed = count_instructions([*arguments_with_count, str(runs)])
    without, _ = count_instructions([*arguments_with_count, "0"])
    return (with_runs - without) / runs, printed


if __name__ == "__main__":
    _probe(sys.argv[1:])
