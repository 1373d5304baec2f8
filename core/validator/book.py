"""The current period as the loop opened it, shared by the synthetic loop and the organic API:
each contender's budget and what it has consumed (organic traffic first, docs/protocol.md §3.3),
how well it has done, and the metagraph to reach it.

What the budgets have spent lives in the store, not here: every reservation is one atomic
statement there, so API replicas on one PostgreSQL database never spend a contender beyond its
budget together. Units are reserved before a request and settled with its record after
(``Store.finish_requests``). Its methods are plain (blocking) calls of the store: a coroutine
makes them in the store's threads (``AsyncStore.call``, ``Store.io``), never on its event loop.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from core.budget import Contender
from core.chain import Metagraph
from core.storage import Store


@dataclass(frozen=True)
class Reservation:
    """Units spent of a contender's budget for one request: the period, and the id of their
    hold in the store (``Store.reserve``) that the request's record ends."""

    period: int
    held: int


class PeriodBook:
    def __init__(self, store: Store):
        self.store = store
        self.period: int | None = None
        self.contenders: dict[tuple[str, str], Contender] = {}
        self.quality: dict[tuple[str, str], float] = {}
        self.metagraph: Metagraph | None = None

    def open(self, period: int, contenders: list[Contender], metagraph: Metagraph,
             quality: dict[tuple[str, str], float]) -> None:
        """Serve ``period``, whose budgets are already in the store (``Store.begin_period``)."""
        self.period, self.metagraph, self.quality = period, metagraph, quality
        self.contenders = {(c.hotkey, c.task): c for c in contenders}

    def used(self) -> dict[tuple[str, str], float]:
        if self.period is None:
            return {}
        return {key: used for key, (_, used) in self.store.spent(self.period).items()}

    def candidates(self, task: str, units: float) -> list[tuple[Contender, float]]:
        """Contenders of ``task`` with at least ``units`` of budget left, each with its routing
        weight: remaining budget x recent quality (1 before any check)."""
        out: list[tuple[Contender, float]] = []
        if self.period is None:
            return out
        for key, (budget, used) in self.store.spent(self.period, task).items():
            contender = self.contenders.get(key)
            if contender is not None and budget - used >= units:
                out.append((contender, (budget - used) * self.quality.get(key, 1.0)))
        return out

    def reserve(self, key: tuple[str, str], units: float, cap: float | None = None
                ) -> Reservation | None:
        """Spend ``units`` if they fit in the budget (and, with ``cap``, while less than ``cap``
        is used: a planned request goes only while organic traffic has not served its part):
        the period they were spent in and their hold, or None."""
        period = self.period
        if period is None:
            return None
        held = self.store.reserve(period, *key, units, cap)
        return None if held is None else Reservation(period, held)

    def capacity(self) -> dict[str, dict[str, float]]:
        """Per task: this validator's budget and what is left of it this period."""
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"budget": 0.0, "remaining": 0.0})
        if self.period is not None:
            for (_, task), (budget, used) in self.store.spent(self.period).items():
                out[task]["budget"] += budget
                out[task]["remaining"] += max(budget - used, 0.0)
        return dict(out)
