"""A chat stream's time limits with one timer per request instead of one per line.

A validator in an audit window reads hundreds of streams at once, each a line every tick; an
``asyncio.timeout_at`` around every wait for a line costs a Timeout, a timer handle and the
task lookup per line (about a tenth of the validator's CPU in ``scripts/bench_window.py``'s
profile). ``StreamWatch`` keeps the same rule with one timer that re-arms itself rarely: each
wait for the miner is bounded by the request's deadline and, once tokens have begun, by
``stall`` seconds from when they last came (the caller says when: ``wait``'s ``since``); only a
wait is ever cancelled, never the consumer's own work between reads (the API relaying to its
client, or a synthetic answer's reader pausing)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class StreamWatch:
    def __init__(self, deadline: float, stall: float):
        self.deadline, self.stall = deadline, stall  # loop times
        self.started = False  # set once the first tokens arrived: silences are stalls from then
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None  # the task waiting now (a relay may hand over)
        self._limit = deadline
        self._waiting = False
        self._fired = False
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self, read: Awaitable[T], since: float | None = None) -> T:
        """``await read`` within the limit, the stall counted from ``since`` (a loop time: when
        the stream last brought tokens), else from now; TimeoutError past it. What ``read`` has
        at once (bytes that came while its reader paused) is taken, even past the limit."""
        now = self._loop.time()
        quiet = now if since is None else since
        self._limit = min(self.deadline, quiet + self.stall) if self.started else self.deadline
        if self._timer is not None and self._timer.when() > self._limit:
            self._timer.cancel()  # the first tokens made the limit nearer than the armed one
            self._timer = None
        if self._timer is None:
            self._timer = self._loop.call_at(self._limit, self._check)
        self._task = asyncio.current_task()
        self._waiting = True
        try:
            return await read
        except asyncio.CancelledError:
            if self._fired and self._task is not None and self._task.uncancel() == 0:
                self._fired = False
                raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def _check(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # the next wait arms it again
        if self._loop.time() >= self._limit:
            self._fired = True
            if self._task is not None:
                self._task.cancel()
        else:  # lines came since it was armed: the limit moved on
            self._timer = self._loop.call_at(self._limit, self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
