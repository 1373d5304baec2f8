"""Pooling the validators' window reports (docs/protocol.md §9), as a pure rule.

One validator's view of a window covers only its share of it: a small validator sends a small
contender a request or two, too few to judge a slice, and a miner that serves some validators and
refuses others splits their weights. Pooled, every validator scores a window from the same sums
over all the reports it holds: Σ good / Σ asked per slice, and over the window.

``robust``: the window's served fraction is the stake-weighted median of each report's own
fraction, and the slice sums only say how far the worst slice falls below the window's average
(capacity that arrives late); a validator reporting good = 0 for a victim then moves it only
if it holds half the stake. What travels between validators (signed reports, collected until the
next window) is issue-16 work; this module is the rule they feed, and the simulator runs it.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.scoring import Tally, WindowOutcome

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
