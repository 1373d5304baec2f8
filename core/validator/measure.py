"""What a validator measured of each contender in a period (docs/protocol.md §4, §9): its own
records, with each window scored from the pooled window reports when those it holds cover
enough of the permitted stake, else from its own view. The period's close and ``--status`` both
read it from the store, so a restarted validator scores exactly what it had gathered."""

from __future__ import annotations

from dataclasses import replace

from core.budget import Contender
from core.pooling import Pooling, pool_window
from core.records import period_outcomes
from core.scoring import PeriodOutcome
from core.storage import Store

Measured = dict[tuple[str, str], tuple[PeriodOutcome, int]]


def measure_period(store: Store, period: int, contenders: list[Contender], period_blocks: int,
                   pooled: bool = True) -> tuple[Measured, list[Pooling]]:
    """Every contender's (outcome, requests) and how each window was scored. ``pooled``: use
    the stored reports (else every window from this validator's own view)."""
    windows = store.windows(period)
    measured = period_outcomes(contenders, store.records(period), windows)
    info = store.period(period)
    stakes = info.stakes if info else {}
    held = store.reports(period) if pooled else {}
    by_block, poolings = {}, []
    for w in windows:
        reports = {v: r.outcomes() for v, r in held.get(w.block, {}).items()}
        outcomes, pooling = pool_window(w.block, reports, contenders, stakes, period_blocks)
        by_block[w.block] = outcomes
        poolings.append(pooling)
    out = {}
    for key, (outcome, n) in measured.items():
        windows_seen = tuple(by_block.get(w.block, {}).get(key, w) for w in outcome.windows)
        out[key] = (replace(outcome, windows=windows_seen), n)
    return out, poolings
