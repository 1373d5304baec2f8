"""Scoring against declared capacity (docs/protocol.md §4), as pure functions.

A contender's requests become ``Tally``s: one per slice of each audit window it was in, and one for
its other traffic (background and organic outside windows). A period's tallies are a
``PeriodOutcome``; ``advance`` folds it into the contender's running ``ContenderState`` (the
demonstrated rate of its last K windows, the scores of its last K windows and periods, its checked
quality); ``weights`` turns everyone's effective capacity into one weight per miner with the fixed
task weights. Nothing here touches the network, a GPU or a database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.tasks import TASKS

K = 16  # windows (and periods) remembered
QUALITY_POWER = 3



def speed_factor(seconds: float, expected: float) -> float:
    """1 at or under the expected time, falling smoothly (half a cosine) to 0 at twice it."""
    if seconds <= expected:
        return 1.0
    if seconds >= 2 * expected:
        return 0.0
    return 0.5 * (1 + math.cos(math.pi * (seconds - expected) / expected))


def speed_quality(task: str, seconds: float, units: float) -> float:
    """A served request's speed factor against its task's expected time for ``units``: its whole
    quality when no checker runs, and a passed check's."""
    return speed_factor(seconds, TASKS[task].expected_seconds(units))


@dataclass(frozen=True)
class Tally:
    """Units a validator asked of one contender in one slice (or outside windows), by outcome;
    ``requests`` counts the requests."""

    asked: float = 0.0
    good: float = 0.0
    refused: float = 0.0  # 429
    failed: float = 0.0  # 5xx, timeouts, invalid answers
    requests: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.asked + other.asked, self.good + other.good,
                     self.refused + other.refused, self.failed + other.failed,
                     self.requests + other.requests)

    @property
    def fraction(self) -> float:
        return self.good / self.asked if self.asked > 0 else 0.0

    def all_failed(self) -> Tally:
        """The same requests, every unit failed."""
        return Tally(self.asked, failed=self.asked, requests=self.requests)

    @property
    def score(self) -> float:
        """``(good / asked) ^ 2``: refused, failed and timed out alike; no mix pays."""
        return self.fraction ** 2


def total(tallies: Sequence[Tally]) -> Tally:
    return sum(tallies, Tally())


@dataclass(frozen=True)
class WindowOutcome:
    """One window of one contender: a tally per slice, from this validator's requests or pooled
    from every validator's reports (docs/protocol.md §9)."""

    block: int
    slices: tuple[Tally, ...]
    pooled: bool = False
    # pooled (``core.pooling``): the served fraction and the score every validator agrees on,
    # from the reports rather than from the slice sums alone
    pooled_served: float | None = None
    pooled_score: float | None = None

    @property
    def tally(self) -> Tally:
        return total(self.slices)

    @property
    def score(self) -> float:
        return self.tally.score if self.pooled_score is None else self.pooled_score

    @property
    def served(self) -> float:
        """The worst served fraction over the window's slices that had requests, so capacity
        that arrives after the window opened earns nothing; pooled, what the reports agree on
        (``core.pooling``)."""
        if self.pooled_served is not None:
            return self.pooled_served
        return min((s.fraction for s in self.slices if s.asked > 0), default=0.0)


@dataclass(frozen=True)
class PeriodOutcome:
    """What this validator measured of one contender in one period."""

    declared: float
    windows: tuple[WindowOutcome, ...] = ()  # the windows that opened in the period
    other: Tally = Tally()  # background and organic requests outside windows
    quality_sum: float = 0.0
    quality_n: int = 0

    @property
    def asked(self) -> float:
        return self.other.asked + sum(w.tally.asked for w in self.windows)


def forfeited(outcome: PeriodOutcome) -> PeriodOutcome:
    """A proven equivocator's period (docs/protocol.md §4): declared 0, so credited 0, and every
    unit asked of it failed, in windows (as the validator's own view: no report lifts them) and
    outside."""
    windows = tuple(WindowOutcome(w.block, tuple(s.all_failed() for s in w.slices))
                    for w in outcome.windows)
    return replace(outcome, declared=0.0, windows=windows, other=outcome.other.all_failed())


@dataclass(frozen=True)
class ContenderState:
    """What a validator remembers of one contender between periods (stored; survives restarts)."""

    registered_at: int = 0  # a hotkey registered anew (another block) starts afresh
    demonstrated_w: tuple[float, ...] = ()  # declared x served, last K windows, oldest first
    scored: tuple[tuple[float, float], ...] = ()  # (asked, score) of its last K windows
    other: tuple[tuple[float, float], ...] = ()  # (asked, score) of its last K periods outside
    checks: tuple[tuple[float, int], ...] = ()  # (quality sum, n) of the last K checked periods
    period_score: float = 0.0  # its last window's score (kept through periods without one)
    declared: float = 0.0
    demonstrated: float = 0.0  # ``demonstrated_rate`` of demonstrated_w; 0 before any window
    credited: float = 0.0  # min(declared, demonstrated)
    reliability: float = 0.0
    quality: float = 1.0  # 1 until the first check: a checker backlog never zeroes a miner


def advance(state: ContenderState, outcome: PeriodOutcome, registered_at: int,
            k: int = K) -> ContenderState:
    """Fold one period into a contender's state. No clawback and no debt: each window measures
    the rate, and ``demonstrated_rate`` over the last K windows spreads one bad window thin."""
    if registered_at != state.registered_at:
        state = ContenderState(registered_at=registered_at)
    shown = state.demonstrated_w
    scored, other = state.scored, state.other
    period_score = state.period_score
    for w in outcome.windows:
        if w.tally.asked <= 0:
            continue
        shown = (shown + (outcome.declared * w.served,))[-k:]
        scored = (scored + ((w.tally.asked, w.score),))[-k:]
        period_score = w.score
    if outcome.other.asked > 0:
        other = (other + ((outcome.other.asked, outcome.other.score),))[-k:]
    checks = state.checks
    if outcome.quality_n:
        checks = (checks + ((outcome.quality_sum, outcome.quality_n),))[-k:]
    demonstrated = demonstrated_rate(shown)
    n = sum(c for _, c in checks)
    return ContenderState(
        registered_at=registered_at, demonstrated_w=shown, scored=scored, other=other,
        checks=checks,
        period_score=period_score, declared=outcome.declared, demonstrated=demonstrated,
        credited=min(outcome.declared, demonstrated),
        reliability=reliability(scored) * reliability(other),
        quality=sum(q for q, _ in checks) / n if n else 1.0)


def demonstrated_rate(shown: Sequence[float]) -> float:
    """The mean of the last windows' ``declared x served``. Not the median, nor a mean without
    the worst window: a miner declaring 2% more than it serves fails a request in few windows,
    and the median of mostly perfect windows paid it x1.045, the mean without the worst x1.006
    of its twin; the plain mean pays it x0.992 and costs an honest miner's outage window 1.8%
    (4 seeds x 150 periods, requests failing whole, docs/protocol.md §4)."""
    return sum(shown) / len(shown) if shown else 0.0


def reliability(scored: Sequence[tuple[float, float]]) -> float:
    """``Σ asked x score / Σ asked``; 1 with nothing asked. Windows and the traffic outside
    them are two factors, not one mean: a validator whose users send much organic traffic would
    otherwise weigh a contender's quiet hours above its windows, and score it apart from the
    others (docs/protocol.md §4)."""
    asked = sum(a for a, _ in scored)
    return sum(a * s for a, s in scored) / asked if asked > 0 else 1.0


def effective(state: ContenderState) -> float:
    """``credited x reliability x quality ^ 3``: linear in capacity, steep in quality."""
    return state.credited * state.reliability * state.quality ** QUALITY_POWER


def weights(effective_by: Mapping[tuple[int, str], float], n_uids: int) -> np.ndarray:
    """One weight per uid: per task, each miner's share of the task's effective capacity, times
    the task weight; tasks with no scored contender give their weight to the others in proportion.
    All zeros when nobody scored anything."""
    task_ids = list(TASKS)
    table = np.zeros((n_uids, len(task_ids)))
    for (uid, task), value in effective_by.items():
        if task in TASKS and 0 <= uid < n_uids and math.isfinite(value) and value > 0:
            table[uid, task_ids.index(task)] += value
    return combine(table, np.array([TASKS[t].weight for t in task_ids]))


def combine(table: np.ndarray, task_weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """``Σ_task W_task x table[:, task] / Σ table[:, task]`` over tasks with a scored contender,
    the task weights renormalised over those tasks."""
    totals = table.sum(axis=0)
    live = totals > 0
    if not live.any():
        return np.zeros(table.shape[0])
    w = np.asarray(task_weights, float) * live
    w /= w.sum()
    shares = np.divide(table, totals, out=np.zeros_like(table), where=live)
    return shares @ w
