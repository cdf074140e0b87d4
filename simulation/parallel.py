"""Rendering on all cores: results in job order, one process per core."""

from __future__ import annotations

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
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        yield from pool.map(function, jobs)
