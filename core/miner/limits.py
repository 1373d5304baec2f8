"""Holding each validator to its stake share of the declaration (docs/protocol.md §3.2, §6).

Units are reserved before work starts (a chat request reserves prompt + max_tokens) and the
unused part is given back when it ends, so concurrent requests cannot overspend a share.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict, deque


class Ledger:
    def __init__(self):
        self._period = -1
        self._used: dict[tuple[str, str], float] = defaultdict(float)
        self._lock = threading.Lock()

    def reserve(self, validator: str, task: str, units: float, allowance: float,
                period: int) -> bool:
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


class Lane:
    """One line of requests: a concurrency group's GPU, or a task's pool of workers. ``limit``
    requests served at once, up to ``max_waiting`` more queued. Freed slots go to the waiters in
    arrival order, never by stake (docs/protocol.md §3.6): each validator's share limit already
    gives it its part, and serving the most-staked first would give small validators slower
    answers and skew their weights."""

    def __init__(self, limit: int, max_waiting: int):
        self.limit, self.max_waiting = limit, max_waiting
        self.busy = 0
        self._waiting: deque[asyncio.Future] = deque()

    async def acquire(self, max_wait_s: float) -> bool:
        if self.busy < self.limit and not self._waiting:
            self.busy += 1
            return True
        if len(self._waiting) >= self.max_waiting:
            return False
        handed = asyncio.get_running_loop().create_future()
        self._waiting.append(handed)
        # not wait_for: from Python 3.12 it raises TimeoutError even when the slot was handed
        # over in the same loop tick as the timeout, and that slot would be lost for good
        try:
            await asyncio.wait({handed}, timeout=max_wait_s)
        except asyncio.CancelledError:  # the caller went away: a slot that came is passed on
            if handed.done() and handed.result():
                self.release()
            raise
        finally:
            if handed in self._waiting:
                self._waiting.remove(handed)
        if handed.done():
            return handed.result()
        handed.cancel()  # too late for a slot: release() skips it
        return False

    def release(self) -> None:
        """Hand the slot to the longest-waiting caller still waiting, else free it."""
        if self.busy > self.limit or not self._hand_over():
            self.busy -= 1

    def _hand_over(self) -> bool:
        while self._waiting:
            first = self._waiting.popleft()
            if not first.done():
                first.set_result(True)
                return True
        return False

    def resize(self, limit: int) -> None:
        """A pool's workers came or went: serve that many at once from now on (requests running
        beyond a lowered limit finish; waiters get the slots a raised one opens)."""
        self.limit = limit
        while self.busy < self.limit and self._hand_over():
            self.busy += 1


class Slots:
    """Concurrency limits per task: tasks in one group share a ``Lane``; a task without a group
    has its own, of one request at a time; a task with workers has its own, as large as its
    healthy workers' concurrency together (``pooled``)."""

    def __init__(self, groups: dict[str, int], task_groups: dict[str, str | None],
                 max_wait_s: float, max_waiting: int = 64, pooled: dict[str, int] | None = None):
        by_group = {g: Lane(n, max_waiting) for g, n in groups.items()}
        self._by_task = {t: by_group[g] if g else Lane(1, max_waiting)
                         for t, g in task_groups.items()}
        self._by_task.update({t: Lane(n, max_waiting) for t, n in (pooled or {}).items()})
        self.max_wait_s = max_wait_s

    def resize(self, task: str, limit: int) -> None:
        self._by_task[task].resize(limit)

    async def acquire(self, task: str) -> bool:
        return await self._by_task[task].acquire(self.max_wait_s)

    def release(self, task: str) -> None:
        self._by_task[task].release()
