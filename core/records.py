"""Per-request records and their summary into a contender's period outcome (SPEC §4)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from core.scoring import PeriodOutcome


class Outcome(str, Enum):
    OK = "ok"
    RATE_LIMITED = "429"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    # Not the miner's doing, so never scored: the validator (period end) or its client gave up on
    # a request still within its expected time; or the miner refused our signature or permit
    # (401/403: the validator's clock, key or metagraph is at fault, and it says so loudly).
    ABANDONED = "abandoned"
    UNAUTHORIZED = "401/403"


NOT_SCORED = frozenset({Outcome.ABANDONED, Outcome.UNAUTHORIZED})


@dataclass(frozen=True)
class RequestRecord:
    period: int
    hotkey: str
    task: str
    organic: bool
    outcome: Outcome
    units: float  # counted by the validator: served when ok or abandoned, 0 when unauthorized,
    #               else the units asked for
    latency_s: float
    quality: float | None = None  # set for checked results
    at: float = 0.0  # unix time sent


def summarize(records: Iterable[RequestRecord], declared: float, budget: float, f: float,
              audit: bool) -> PeriodOutcome:
    """One contender's period: units by outcome, and the checked quality. Timeouts and invalid
    answers count with server errors."""
    good = refused = failed = q_sum = 0.0
    q_n = 0
    for r in records:
        if r.outcome in NOT_SCORED:
            continue
        if r.outcome is Outcome.OK:
            good += r.units
        elif r.outcome is Outcome.RATE_LIMITED:
            refused += r.units
        else:
            failed += r.units
        if r.quality is not None:
            q_sum += r.quality
            q_n += 1
    return PeriodOutcome(declared=declared, budget=budget, f=f, audit=audit,
                         consumed=good + refused + failed, good=good, refused=refused,
                         failed=failed, quality_sum=q_sum, quality_n=q_n)


def period_outcomes(targets, records: Iterable[RequestRecord]) -> list[tuple]:
    """Every target's (target, PeriodOutcome, number of requests) from a period's records."""
    by_key: dict[tuple[str, str], list[RequestRecord]] = {}
    for r in records:
        by_key.setdefault((r.hotkey, r.task), []).append(r)
    out = []
    for t in targets:
        c = t.contender
        mine = by_key.get((c.hotkey, c.task), [])
        out.append((t, summarize(mine, c.declared, c.budget, t.f, t.audit), len(mine)))
    return out
