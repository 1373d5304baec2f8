"""Scoring against declared capacity (SPEC §4), as pure functions.

Per period a contender's measured outcome becomes a ``PeriodOutcome``; ``advance`` folds it into
the contender's running ``ContenderState`` (latest audit, clawback debt, the last K periods); and
``weights`` turns everyone's effective capacity into one weight per miner with the fixed task
weights. Nothing here touches the network, a GPU or a database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.tasks import TASKS

K_PERIODS = 16
QUALITY_POWER = 3
CLAWBACK_FACTOR = 2.0
CLAWBACK_THRESHOLD = 0.9


def speed_factor(seconds: float, expected: float) -> float:
    """1 at or under the expected time, falling smoothly (half a cosine) to 0 at twice it."""
    if seconds <= expected:
        return 1.0
    if seconds >= 2 * expected:
        return 0.0
    return 0.5 * (1 + math.cos(math.pi * (seconds - expected) / expected))


@dataclass(frozen=True)
class PeriodOutcome:
    """What this validator measured of one contender in one period, in the task's units."""

    declared: float
    budget: float
    f: float
    audit: bool
    consumed: float = 0.0  # units attempted: served, refused or failed
    good: float = 0.0
    refused: float = 0.0  # 429
    failed: float = 0.0  # 5xx, timeouts, invalid answers
    quality_sum: float = 0.0
    quality_n: int = 0

    @property
    def score(self) -> float:
        return period_score(self.consumed, self.good, self.refused, self.failed, self.budget)


def period_score(consumed: float, good: float, refused: float, failed: float,
                 budget: float) -> float:
    """``good_fraction x (1 - f429 x unqueried) x (1 - f5xx x unqueried)``.

    Refusing early in a period (much budget unqueried) costs most; refusing once the validator has
    used most of the budget is forgiven."""
    if consumed <= 0:
        return 0.0
    unqueried = max(budget - consumed, 0.0) / budget if budget > 0 else 0.0
    return (good / consumed) * (1 - refused / consumed * unqueried) \
        * (1 - failed / consumed * unqueried)


@dataclass(frozen=True)
class ContenderState:
    """What a validator remembers of one contender between periods (stored; survives restarts)."""

    demonstrated: float = 0.0  # from its latest audit; 0 before any
    audited: bool = False
    debt: float = 0.0  # clawback still to repay, in credited-unit-periods
    since_audit: tuple[tuple[float, float], ...] = ()  # (credited before repayment, score)
    window: tuple[PeriodOutcome, ...] = field(default=())  # the last K periods, oldest first
    credited: float = 0.0  # latest period's credited capacity, after repayment
    reliability: float = 0.0  # over the window, kept so that weights need no pass over it
    quality: float = 0.0


def demonstrated(outcome: PeriodOutcome, share: float) -> float:
    """Good units served in an audit, scaled from this validator's tested share to the miner's
    whole capacity: ``good / (f x share)``."""
    if outcome.f <= 0 or share <= 0:
        return 0.0
    return outcome.good / (outcome.f * share)


def advance(state: ContenderState, outcome: PeriodOutcome, share: float,
            k: int = K_PERIODS) -> ContenderState:
    """Fold one period into a contender's state: audits update what it has shown and charge the
    over-claim clawback; every period repays debt from credited capacity before it earns."""
    score = outcome.score
    debt, since, shown, audited = state.debt, state.since_audit, state.demonstrated, state.audited
    if outcome.audit:
        d = demonstrated(outcome, share)
        if d < CLAWBACK_THRESHOLD * outcome.declared:
            debt += CLAWBACK_FACTOR * sum(max(c - d, 0.0) * s for c, s in since)
        shown, audited, since = d, True, ()
    credited = min(outcome.declared, shown)
    repay = min(debt, credited)
    window = (state.window + (outcome,))[-k:]
    return ContenderState(
        demonstrated=shown,
        audited=audited,
        debt=debt - repay,
        since_audit=since + ((credited, score),),
        window=window,
        credited=credited - repay,
        reliability=reliability(window),
        quality=quality(window),
    )


def reliability(window: Sequence[PeriodOutcome]) -> float:
    """Consumed-weighted mean period score over the window."""
    consumed = sum(o.consumed for o in window)
    return sum(o.consumed * o.score for o in window) / consumed if consumed > 0 else 0.0


def quality(window: Sequence[PeriodOutcome]) -> float:
    """Mean quality of the checked results in the window; 0 when none was checked."""
    n = sum(o.quality_n for o in window)
    return sum(o.quality_sum for o in window) / n if n else 0.0


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


def combine(table: np.ndarray, task_weights: Sequence[float]) -> np.ndarray:
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

