"""Pooling the validators' window reports (docs/protocol.md §9), as a pure rule.

One validator's view of a window covers only its share of it: a small validator sends a small
contender a request or two, too few to judge a slice, and a miner that serves some validators and
refuses others splits their weights. Pooled, every validator scores a window from the same sums
over all the reports it holds: Σ good / Σ asked per slice, and over the window.

``robust``: the window's served fraction is the stake-weighted median of each report's own
fraction, and the slice sums only say how far the worst slice falls below the window's average
(capacity that arrives late); a validator reporting good = 0 for a victim then moves it only
if it holds half the stake. The reports themselves travel signed between validators
(``core.window_report``, ``core.validator.sharing``); this module is the rule they feed, and the
simulator runs the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from core import plan
from core.budget import Contender
from core.scoring import Tally, WindowOutcome

Key = tuple[str, str]  # (hotkey, task)

COVERAGE = 2 / 3  # of permitted stake the reports must cover to be pooled
# robust pooling: a slice is judged when reports holding this share of permitted stake sent
# requests in it (measured in the simulator: 0.5 let a stake-first over-claimer earn x1.03; 0.3
# keeps a lying 5%-stake validator's effect on its victim to x0.994 and stake-first to x0.75)
SLICE_COVERAGE = 0.3


def capped(t: Tally, cap: float) -> Tally:
    """A report's slice with ``asked`` at most ``cap`` (its validator's share of the window,
    rounded up to whole requests), its outcomes scaled with it: no validator weighs more than
    its share."""
    if t.asked <= cap or t.asked <= 0:
        return t
    f = cap / t.asked
    return Tally(cap, t.good * f, t.refused * f, t.failed * f, t.requests)


def report_cap(c: Contender, share: float, period_blocks: int) -> float:
    """The most units a validator of stake ``share`` asks ``c`` in one slice of a window (its
    plan's requests, rounded up to whole ones): what pooling caps its report's ``asked`` at."""
    theirs = replace(c, budget=c.declared * share)
    n, size = plan.requests_for(theirs, plan.window_units(theirs, period_blocks), 0.0)
    return math.ceil(max(n, 1) / plan.SLICES) * size


@dataclass(frozen=True)
class Pooling:
    """How one window was scored: from the reports of ``used`` (covering ``coverage`` of the
    permitted stake), or from this validator's own view when ``used`` is empty."""

    block: int
    coverage: float
    used: tuple[str, ...] = ()


def pool_window(block: int, reports: Mapping[str, Mapping[Key, WindowOutcome]],
                contenders: Sequence[Contender], stake: Mapping[str, float], period_blocks: int,
                robust: bool = True) -> tuple[dict[Key, WindowOutcome], Pooling]:
    """Every contender's pooled window from the reports held (by validator hotkey, this
    validator's own among them), or nothing when they cover less than ``COVERAGE`` of the
    permitted stake (``stake``). A report without a row for a contender sent it nothing."""
    total = sum(stake.values())
    held = [v for v in reports if stake.get(v, 0.0) > 0]
    coverage = sum(stake[v] for v in held) / total if total > 0 else 0.0
    if coverage < COVERAGE:
        return {}, Pooling(block, coverage)
    empty = WindowOutcome(block, (Tally(),) * plan.SLICES)
    out = {}
    for c in contenders:
        key = (c.hotkey, c.task)
        views = {v: reports[v].get(key, empty) for v in held}
        caps = {v: report_cap(c, stake[v] / total, period_blocks) for v in held}
        pooled = pool(views, stake, caps, robust)
        if pooled is not None and pooled.tally.asked > 0:
            out[key] = pooled
    return out, Pooling(block, coverage, tuple(sorted(held)))


def weighted_median(values: list[float], weights: list[float]) -> float:
    """The value at which half the weight lies at or below (the lower weighted median)."""
    pairs = sorted(zip(values, weights))
    half, held = sum(weights) / 2, 0.0
    for value, weight in pairs:
        held += weight
        if held >= half:
            return value
    return pairs[-1][0]


def pool(reports: Mapping[str, WindowOutcome], stake: Mapping[str, float],
         caps: Mapping[str, float], robust: bool = False) -> WindowOutcome | None:
    """One window of one contender from every report held (``reports`` by validator hotkey, its
    own included), or None when they cover less than ``COVERAGE`` of the permitted stake
    (``stake``: every permitted validator's; ``caps``: each one's share of the window in units
    a slice)."""
    total = sum(stake.values())
    covered = sum(stake.get(v, 0.0) for v in reports)
    if total <= 0 or covered < COVERAGE * total or not reports:
        return None
    block = next(iter(reports.values())).block
    n = len(next(iter(reports.values())).slices)
    slices = [Tally()] * n
    for v, w in reports.items():
        for j, t in enumerate(w.slices):
            slices[j] = slices[j] + capped(t, caps.get(v, 0.0))
    if not robust:
        return WindowOutcome(block, tuple(slices), pooled=True)
    # the window's fraction: the stake-weighted median of each report's own; a slice is judged
    # when reports holding SLICE_COVERAGE of the stake sent requests in it
    asked = [v for v, w in reports.items() if w.tally.asked > 0]
    if not asked:
        return WindowOutcome(block, tuple(slices), pooled=True)
    fraction = weighted_median([reports[v].tally.fraction for v in asked],
                               [stake.get(v, 0.0) for v in asked])
    judged = tuple(sum(stake.get(v, 0.0) for v in asked if reports[v].slices[j].requests)
                   >= SLICE_COVERAGE * total for j in range(n))
    return WindowOutcome(block, tuple(slices), pooled=True, fraction=fraction, judged=judged)
