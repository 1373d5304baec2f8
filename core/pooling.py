"""Pooling the validators' window reports (docs/protocol.md §9), as a pure rule.

One validator's view of a window covers only its share of it: a small validator sends a small
contender a request or two, too few to judge a slice, and a miner that serves some validators and
refuses others splits their weights. Pooled, every validator scores a window from the same
reports, each one a claim its validator may have made up, so the rule bounds what any one can do:

- each report weighs its ``asked``, capped at its validator's stake share of the window and of
  each slice (``Cap``): no validator weighs more than its stake, however much it claims to have
  sent, so a small one cannot round its one request up into a large share of a small miner's;
- the window's **level** is an L-estimator of the reports' served fractions ``f_v`` sorted from
  the lowest: the lowest 30% of the weight counts once, the next 40% counts 1.75 times, the top
  30% not at all (``LEVEL_WEIGHTS``). A report that claims more than the others lands in the
  ignored top, so a validator fabricating service for its own miner lifts nothing; one that claims
  less (good = 0 about a victim) lowers the level by about its stake; and a miner that serves
  only the validators holding most of the stake is judged by the ones it failed;
- served is the lower of the level and the worst minute the pooled sums can judge (capacity
  that arrives after the window opened earns what its first minute shows), and the window's
  score is ``Σ A_v f_v³ / Σ A_v f_v``: ``f²`` when every report agrees; reports of f = 0 leave
  it (a liar is counted once, in the level), so a miner that wholly refuses some validators is
  charged by the level alone.

The reports travel signed between validators (``core.window_report``, ``core.validator.sharing``);
this module is the rule they feed, and the simulator runs the same rule.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from core import plan
from core.budget import Contender
from core.scoring import Tally, WindowOutcome

Key = tuple[str, str]  # (hotkey, task)

COVERAGE = 2 / 3  # of permitted stake the reports must cover to be pooled
# outside windows, the stake whose validators asked something that makes the pooled tally
# evidence: a liar alone needs this much; background requests are few (1% of a budget, rounded),
# so at 2/3 a window early in a period found too few askers and each validator kept its own view
OUTSIDE_EVIDENCE = 1 / 3
# a minute of a window is judged on this many pooled requests at least (``minutes``)
MIN_GROUP_REQUESTS = 3
# (share of the reports' weight from the lowest fraction up, multiplier): the level's weights,
# summing to 1 so that reports that agree give their common fraction. The top 30% is ignored, so
# a validator fabricating service for its own miner gains it at most what the 1 / (1 - s) of a
# fake of its own share gives; the rest is a plain mean, so a liar lowers a victim by s / 0.7
# (docs/protocol.md §9; with 1 and 1.75 on the lowest 30% and the next 40%, a liar lowered a
# victim by s but a colluder whose miner served 40% of the stake earned 0.7 / (0.7 - s))
LEVEL_WEIGHTS = ((0.7, 1 / 0.7), (0.3, 0.0))
@dataclass(frozen=True)
class Cap:
    """The most units a report of a validator weighs for one contender: its stake share of the
    window's full rate in the level, and that share of each slice in the slice sums. Sending
    more than its share (a validator that rounds a fraction of a request up to one, or organic
    traffic in the window) changes no fraction, only what it weighs: never more than its
    stake."""

    slice: float
    window: float


def capped(t: Tally, cap: float) -> Tally:
    """``t`` with ``asked`` at most ``cap``, its outcomes scaled with it."""
    if t.asked <= cap or t.asked <= 0:
        return t
    f = cap / t.asked
    return Tally(cap, t.good * f, t.refused * f, t.failed * f, t.requests)


def report_cap(c: Contender, share: float, period_blocks: int) -> Cap:
    """What pooling counts of a report by a validator of stake ``share`` about ``c``."""
    window = plan.window_units(replace(c, budget=c.declared * share), period_blocks)
    return Cap(window / plan.SLICES, window)


def level(fractions: Sequence[float], weights: Sequence[float]) -> float:
    """The L-estimator of ``LEVEL_WEIGHTS`` over fractions weighted by ``weights``."""
    total = sum(weights)
    if total <= 0:
        return 0.0
    bands, at, out = [], 0.0, 0.0
    for width, multiplier in LEVEL_WEIGHTS:
        bands.append((at, at + width, multiplier))
        at += width
    below = 0.0
    for f, w in sorted(zip(fractions, weights)):
        lo, hi = below / total, (below + w) / total
        below += w
        out += f * sum(m * max(0.0, min(hi, b) - max(lo, a)) for a, b, m in bands)
    return out


def most_lowered(share: float) -> float:
    """The most a report weighing ``share`` of the weight lowers the level, as a share of the
    level the others agree on: the level's weights over the lowest ``share`` (``share / 0.7``
    up to 70%)."""
    out, at = 0.0, 0.0
    for width, multiplier in LEVEL_WEIGHTS:
        out += multiplier * max(0.0, min(share, at + width) - at)
        at += width
    return min(out, 1.0)


@dataclass(frozen=True)
class Pooling:
    """How one window was scored: from the reports of ``used`` (covering ``coverage`` of the
    permitted stake), or from this validator's own view when ``used`` is empty."""

    block: int
    coverage: float
    used: tuple[str, ...] = ()


def pool_window(block: int, reports: Mapping[str, Mapping[Key, WindowOutcome]],
                contenders: Sequence[Contender], stake: Mapping[str, float], period_blocks: int,
                answered: Mapping[str, Collection[str]] | None = None
                ) -> tuple[dict[Key, WindowOutcome], Pooling]:
    """Every contender's pooled window from the reports held (by validator hotkey, this
    validator's own among them), or nothing when they cover less than ``COVERAGE`` of the
    permitted stake (``stake``). A report without a row for a contender counts as
    ``refused``, unless it carries the contender's declaration (``answered``: the miners' hotkeys
    each report carries one of): the miner answered that validator, which then scored nothing of
    it in the window (its requests still out at the period's end, say), and has no view."""
    total = sum(stake.values())
    held = [v for v in reports if stake.get(v, 0.0) > 0]
    coverage = sum(stake[v] for v in held) / total if total > 0 else 0.0
    if coverage < COVERAGE:
        return {}, Pooling(block, coverage)
    out = {}
    for c in contenders:
        key = (c.hotkey, c.task)
        caps = {v: report_cap(c, stake[v] / total, period_blocks) for v in held}
        views = {}
        for v in held:
            row = reports[v].get(key)
            if row is None and answered is not None and c.hotkey in answered.get(v, ()):
                row = WindowOutcome(block, (Tally(),) * plan.SLICES)  # no view, still counted
            views[v] = row or refused(block, caps[v])
        pooled = pool(views, stake, caps)
        if pooled is not None and pooled.tally.asked > 0:
            out[key] = pooled
    return out, Pooling(block, coverage, tuple(sorted(held)))


def pool_outside(tallies: Mapping[str, Tally], stake: Mapping[str, float], budget: float
                 ) -> Tally | None:
    """A contender's requests outside windows in a period, pooled from the reports held
    (``tallies`` by validator, this validator's own among them): the level of their served
    fractions, each weighing the units it asked up to its validator's share of ``budget`` (the
    contender's declaration), as one tally every validator agrees on. None (each validator
    keeps its own view) unless the reports cover ``COVERAGE`` of the stake and validators
    holding ``OUTSIDE_EVIDENCE`` of it asked something: one small validator's report of a
    failed request is no evidence the others lacked. So a miner that serves one validator
    outside windows and refuses the others is judged alike by all of them, as in windows
    (docs/protocol.md §9)."""
    total = sum(stake.values())
    asked = {v: t for v, t in tallies.items() if t.asked > 0 and stake.get(v, 0.0) > 0}
    if (total <= 0 or sum(stake.get(v, 0.0) for v in tallies) < COVERAGE * total
            or sum(stake[v] for v in asked) < OUTSIDE_EVIDENCE * total):
        return None
    weights = {v: min(t.asked, budget * stake[v] / total) for v, t in asked.items()}
    at = level([t.fraction for t in asked.values()], list(weights.values()))
    units = sum(weights.values())
    return Tally(units, units * at, 0.0, units * (1 - at), sum(t.requests for t in asked.values()))


def refused(block: int, cap: Cap) -> WindowOutcome:
    """A report's window of a declared contender it has no row for: the contender left its
    capacity call unanswered, or refused it, so the validator's share of the window counts as
    refused. Silence towards one validator is no lower declaration (docs/protocol.md §9)."""
    return WindowOutcome(block, (Tally(cap.slice, failed=cap.slice),) * plan.SLICES)


def pool(reports: Mapping[str, WindowOutcome], stake: Mapping[str, float],
         caps: Mapping[str, Cap]) -> WindowOutcome | None:
    """One window of one contender from every report held (``reports`` by validator hotkey, its
    own included), or None when they cover less than ``COVERAGE`` of the permitted stake
    (``stake``: every permitted validator's; ``caps``: what each one's report counts for)."""
    total = sum(stake.values())
    covered = sum(stake.get(v, 0.0) for v in reports)
    if total <= 0 or covered < COVERAGE * total or not reports:
        return None
    block = next(iter(reports.values())).block
    n = len(next(iter(reports.values())).slices)
    slices = [Tally()] * n
    weights, fractions = [], []
    for v, w in reports.items():
        cap = caps.get(v, Cap(0.0, 0.0))
        for j, t in enumerate(w.slices):
            slices[j] = slices[j] + capped(t, cap.slice)
        if w.tally.asked > 0:
            weights.append(min(w.tally.asked, cap.window))
            fractions.append(w.tally.fraction)
    at = level(fractions, weights)
    full = sum(caps.get(v, Cap(0.0, 0.0)).slice for v in reports)
    served = sum(a * f for a, f in zip(weights, fractions))
    score = sum(a * f ** 3 for a, f in zip(weights, fractions)) / served if served > 0 else 0.0
    return WindowOutcome(block, tuple(slices), pooled=True,
                         pooled_served=min([at, *(g.fraction for g in minutes(slices, full, at))]),
                         pooled_score=score)


def minutes(slices: Sequence[Tally], full: float, at: float) -> list[Tally]:
    """The window's slices as it is judged minute by minute: consecutive slices merged until
    each group holds ``MIN_GROUP_REQUESTS`` requests (a short tail joins the group before it),
    and in each group the share of the full rate (``full`` a slice) that no report holds taken
    to be served at the level ``at``. A lone request says little of a minute, and a report's
    requests falling where few others did must weigh no more there than its stake: so a lying
    validator moves a minute about as far as it moves the level, while capacity that arrives
    after the window opened still shows in its first minutes."""
    groups: list[tuple[Tally, int]] = []  # (the slices' sum, how many)
    held, width = Tally(), 0
    for s in slices:
        held, width = held + s, width + 1
        if held.requests >= MIN_GROUP_REQUESTS:
            groups.append((held, width))
            held, width = Tally(), 0
    if held.requests and groups:
        groups[-1] = (groups[-1][0] + held, groups[-1][1] + width)
    elif held.requests:
        groups.append((held, width))
    out = []
    for g, k in groups:
        missing = max(0.0, full * k - g.asked)
        out.append(Tally(g.asked + missing, g.good + at * missing, g.refused, g.failed,
                         g.requests))
    return out
