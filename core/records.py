"""Per-request records and their summary into a contender's period outcome (docs/protocol.md §4):
each record falls in the slice of the window it was sent in, or outside windows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from core.budget import Contender
from core.plan import SLICES, Window
from core.scoring import PeriodOutcome, Tally, WindowOutcome


class Outcome(str, Enum):
    OK = "ok"
    RATE_LIMITED = "429"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    INVALID = "invalid"
    # The miner refused our signature or permit. It admitted this validator's signed /capacity
    # call this period (a contender that did not declares 0 and is sent nothing), so this is a
    # refusal like any other failure, never a way to step out of the count (docs/protocol.md §6)
    UNAUTHORIZED = "401/403"
    # Not the miner's doing, so never scored: the validator (period end) or its client gave up on
    # a request still within its expected time.
    ABANDONED = "abandoned"
    # Not sent: a slice after its window slice ended it still waited for a slot (the miner's
    # own, sized for its declared rate, held by its slow answers; or the validator's). Counted
    # as asked and not served: a rate that was not asked is never credited (docs/protocol.md §3)
    LATE = "late"


NOT_SCORED = frozenset({Outcome.ABANDONED})


@dataclass(frozen=True, slots=True)  # a close holds a period's: no dict each
class RequestRecord:
    period: int
    hotkey: str
    task: str
    organic: bool
    outcome: Outcome
    units: float  # counted by the validator: served when ok or abandoned, else the units asked
    latency_s: float
    quality: float | None = None  # set for checked results
    at: float = 0.0  # unix time sent: places it in a window's slice


@dataclass(frozen=True)
class Tallied:
    """Records of one contender and one outcome summed by the store (``RecordRoom.tallied``):
    in one slice of a window, or (``part`` None) wherever they were sent."""

    hotkey: str
    task: str
    part: int | None
    outcome: Outcome
    units: float
    requests: int


def outcome_tally(outcome: Outcome, units: float, requests: int = 1) -> Tally:
    """Scored requests of one outcome as a tally; timeouts and invalid answers count with server
    errors."""
    if outcome is Outcome.OK:
        return Tally(units, good=units, requests=requests)
    if outcome is Outcome.RATE_LIMITED:
        return Tally(units, refused=units, requests=requests)
    return Tally(units, failed=units, requests=requests)


def tally(r: RequestRecord) -> Tally:
    """One scored record as a tally."""
    return outcome_tally(r.outcome, r.units)


def summarize(records: Iterable[RequestRecord], declared: float,
              windows: Sequence[Window] = ()) -> PeriodOutcome:
    """One contender's period: a tally per slice of each window, one for the rest, and the
    checked quality."""
    slices = {w.block: [Tally()] * SLICES for w in windows}
    other = Tally()
    q_sum, q_n = 0.0, 0
    for r in records:
        if r.outcome in NOT_SCORED:
            continue
        t = tally(r)
        placed = next(((w, i) for w in windows if (i := w.slice_of(r.at)) is not None), None)
        if placed is None:
            other = other + t
        else:
            w, i = placed
            slices[w.block][i] = slices[w.block][i] + t
        if r.quality is not None:
            q_sum += r.quality
            q_n += 1
    return PeriodOutcome(declared, tuple(WindowOutcome(w.block, tuple(slices[w.block]))
                                         for w in windows), other, q_sum, q_n)


def period_outcomes(contenders, records: Iterable[RequestRecord], windows: Sequence[Window] = ()
                    ) -> dict[tuple[str, str], tuple[PeriodOutcome, int]]:
    """Every contender's (PeriodOutcome, number of requests) from a period's records."""
    by_key: dict[tuple[str, str], list[RequestRecord]] = {}
    for r in records:
        by_key.setdefault((r.hotkey, r.task), []).append(r)
    out = {}
    for c in contenders:
        mine = by_key.get((c.hotkey, c.task), [])
        out[(c.hotkey, c.task)] = (summarize(mine, c.declared, windows), len(mine))
    return out


# The tallies below add sums the store made (in its own order) where ``summarize`` adds record by
# record: the same figures, as units are whole (tokens, steps), and sums of whole numbers under
# 2**53 are exact in any order.


def window_outcomes(contenders: Iterable[Contender], window: Window, groups: Iterable[Tallied]
                    ) -> dict[tuple[str, str], WindowOutcome]:
    """Every contender's outcome in ``window`` from its records summed by slice (``part``):
    what ``summarize`` makes of them."""
    slices = {(c.hotkey, c.task): [Tally()] * SLICES for c in contenders}
    for g in groups:
        mine = slices.get((g.hotkey, g.task))
        if mine is not None and g.part is not None and g.outcome not in NOT_SCORED:
            mine[g.part] = mine[g.part] + outcome_tally(g.outcome, g.units, g.requests)
    return {key: WindowOutcome(window.block, tuple(s)) for key, s in slices.items()}


def outcome_tallies(contenders: Iterable[Contender], groups: Iterable[Tallied]
                    ) -> dict[tuple[str, str], Tally]:
    """Every contender's tally of its scored records, summed by outcome."""
    out = {(c.hotkey, c.task): Tally() for c in contenders}
    for g in groups:
        key = (g.hotkey, g.task)
        if key in out and g.outcome not in NOT_SCORED:
            out[key] = out[key] + outcome_tally(g.outcome, g.units, g.requests)
    return out
