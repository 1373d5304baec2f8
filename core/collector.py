"""Python's garbage collector, set for a process that holds many short-lived objects at once.

An audit window keeps about a thousand chat streams in flight in the validator, each holding its
tokens until it ends; with CPython's default threshold (a young collection every 700 net
allocations) the collector then walked those objects, and everything start-up loaded, several
hundred times a second: in ``scripts/bench_window.py`` (256 miners, half today's caps, one 20 s
window) 2,472 collections took 6.5 s of the validator's ~15 s of CPU. Reference counting frees
almost everything here; the collector is only for cycles, which are rare, so it can run far less
often. Measured in the same benchmark: 16 collections, 0.7 s; 13.8 s of CPU per million tokens
instead of 20.2.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # net allocations between young collections (CPython's default: 700)


def settle() -> None:
    """Call once start-up has loaded what lives as long as the process (modules, models,
    tokenizers): they move out of the collector's sight (``gc.freeze``), and young collections
    run every YOUNG_THRESHOLD net allocations. The older generations keep their ratios."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
