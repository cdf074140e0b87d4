"""Rendering on all cores: results in job order, one process per core."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def ordered_map(
    function: Callable[[Any], Any], jobs: Sequence[Any], workers: int | None = None
) -> Iterator[Any]:
    """function(job) for each job, in order; in worker processes unless there is one worker or job."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    # Spawned, not forked: a fork copies a process's locks but not its threads, so a child hangs
    # where the caller had used OpenMP (GalSim), OpenCV's or TensorFlow's thread pools. The test
    # suite's workers have used all three.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        yield from pool.map(function, jobs)
