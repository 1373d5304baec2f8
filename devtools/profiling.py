"""Profiling a benchmark's own process, for the figures that miss their goal."""

from __future__ import annotations

import cProfile
import time
from collections.abc import Callable


def run_profiled(run: Callable[[], object], path: str | None, wall: bool = False) -> None:
    """``run()``; with ``path``, under cProfile with its stats written there (read them with
    ``python -m pstats``). It counts CPU time, so time the process spends waiting or preempted
    on a busy machine does not show; ``wall`` counts wall time instead (an event loop blocked on
    a database shows)."""
    if not path:
        run()
        return
    with cProfile.Profile(time.perf_counter if wall else time.process_time) as profile:
        run()
    profile.dump_stats(path)
