"""Two rules of how a validator spends and books its budgets (docs/protocol.md §3.3, §4), named
here so that they are stated and tested once; the store's SQL only applies them, atomically
among replicas sharing a database (``core.storage.periods``, ``core.storage.records``).

- **Organic first.** A request goes only if its units fit in what is left of its contender's
  budget; a planned (synthetic) request also only while the budget's use is under its plan's
  ``cap``, so organic traffic that spent the budget first takes the synthetic share's place.
- **Late records.** A request that ends after its period was sealed for scoring is recorded in
  the first period not sealed yet, so every record lands in a period that is still to be scored
  and each period's ``used`` stays the sum of its records.
"""

from __future__ import annotations

from collections.abc import Mapping


def admits(budget: float, used: float, units: float, cap: float | None = None) -> bool:
    """Whether ``units`` may be spent of a budget with ``used`` spent so far (``cap``: a planned
    request's limit on ``used``; None for an organic request)."""
    return used + units <= budget and (cap is None or used < cap)


def landing(period: int, sealed: Mapping[int, bool]) -> int:
    """Where a record of ``period`` lands, given the begun periods from ``period`` on and whether
    each is sealed: ``period`` itself until it is sealed, else the first later period not sealed,
    else the period after the last sealed one (it is counted in when that period begins)."""
    if not sealed.get(period, False):
        return period
    open_later = [p for p, s in sealed.items() if p > period and not s]
    if open_later:
        return min(open_later)
    return max(p for p, s in sealed.items() if s and p >= period) + 1
