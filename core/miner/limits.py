"""Holding each validator to its stake share of the declaration (SPEC §3.2, §6).

Units are reserved before work starts (a chat request reserves prompt + max_tokens) and the
unused part is given back when it ends, so concurrent requests cannot overspend a share.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict


class Ledger:
    def __init__(self):
        self._period = -1
        self._used: dict[tuple[str, str], float] = defaultdict(float)
        self._lock = threading.Lock()

    def reserve(self, validator: str, task: str, units: float, allowance: float, period: int) -> bool:
        """Reserve ``units`` if the validator's use of the task stays within ``allowance``."""
        with self._lock:
            if period != self._period:
                self._period, self._used = period, defaultdict(float)
            key = (validator, task)
            if self._used[key] + units > allowance:
                return False
            self._used[key] += units
            return True

    def release(self, validator: str, task: str, units: float, period: int) -> None:
        """Give back reserved units that were not used (same period only)."""
        with self._lock:
            if period == self._period:
                key = (validator, task)
                self._used[key] = max(self._used[key] - units, 0.0)

    def used(self, validator: str, task: str) -> float:
        with self._lock:
            return self._used.get((validator, task), 0.0)


class Slots:
    """Concurrency limits: tasks in one group share one limit; a task without a group has its own
    limit of one. A request waits at most ``max_wait_s`` for a slot."""

    def __init__(self, groups: dict[str, int], task_groups: dict[str, str | None], max_wait_s: float):
        self._by_group = {g: asyncio.Semaphore(n) for g, n in groups.items()}
        self._by_task = {
            t: self._by_group[g] if g else asyncio.Semaphore(1) for t, g in task_groups.items()
        }
        self.max_wait_s = max_wait_s

    async def acquire(self, task: str) -> bool:
        try:
            await asyncio.wait_for(self._by_task[task].acquire(), self.max_wait_s)
            return True
        except TimeoutError:
            return False

    def release(self, task: str) -> None:
        self._by_task[task].release()
