"""Pooling the validators' window reports (docs/protocol.md §9), as a pure rule.

One validator's view of a window covers only its share of it: a small validator sends a small
contender a request or two, too few to judge a slice, and a miner that serves some validators and
refuses others splits their weights. Pooled, every validator scores a window from the same sums
over all the reports it holds: Σ good / Σ asked per slice, and over the window.

What travels between validators (signed reports, collected until the next window) is issue-16
work; this module is the rule they feed, and the simulator runs it.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.scoring import Tally, WindowOutcome

COVERAGE = 2 / 3  # of permitted stake the reports must cover to be pooled


def capped(t: Tally, cap: float) -> Tally:
    """A report's slice with ``asked`` at most ``cap`` (its validator's share of the window,
    rounded up to whole requests), its outcomes scaled with it: no validator weighs more than
    its share."""
    if t.asked <= cap or t.asked <= 0:
        return t
    f = cap / t.asked
    return Tally(cap, t.good * f, t.refused * f, t.failed * f, t.requests)


def pool(reports: Mapping[str, WindowOutcome], stake: Mapping[str, float],
         caps: Mapping[str, float]) -> WindowOutcome | None:
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
    return WindowOutcome(block, tuple(slices), pooled=True)
