"""One validator as several processes (API replicas on one PostgreSQL database): each serves
organic traffic from the shared store and sends its part of each audit window (``shards.py``),
and exactly one runs the period loop (capacities, synthetic plan, scoring, weights), the one
holding the store's lease. The others try to take the lease every ``poll_s``; when its holder
dies, one of them has the loop within about that long.

A process that takes the lease re-derives ``used`` of the periods it resumes (the reservations of
requests a dead holder cut off are not spent), but only once that holder's requests are known to
be over (``Takeover``): never under requests still in flight, whose records would then settle
against reservations no longer counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import aiohttp

from core.errors import Unavailable
from core.storage import AsyncStore, Store
from core.storage.base import Lease
from core.storage.sqlite import FileLease
from core.validator.recorder import Recorder
from core.validator.shards import Shards
from core.validator.traffic import Traffic

log = logging.getLogger("validator.replica")
# what the period loop and its followers meet in the ordinary course (the chain or the database
# away, a peer's connection gone): logged in a line; anything else also with its traceback
EXPECTED_FAILURES = (Unavailable, OSError, aiohttp.ClientError, TimeoutError)

# How long a lease holder that lost its lease may still have synthetic requests whose records are
# not written, once it has seen the loss (it checks every poll): its loop cancels them at once,
# their records are written or journaled, a write waiting up to the pool's 10 s for a connection
# (``core.storage.postgres.POOL_WAIT_S``), and journaled ones are written back within a second of
# the store answering it (``core.validator.recorder.RETRY_S``).
STOP_S = 12.0


class Takeover:
    """When this process may re-derive a period's ``used`` from its records: once per period
    after it took the lease, and only when the period's previous leader is known dead, that is
    ``settle_s`` after the lease became ours (``settle_s()``: by then the previous holder has
    seen its lease gone and stopped every request it sent as leader), and once this process's
    own journal is written back (its own records all stored). Organic requests other live
    replicas have in flight at that moment are not seen (docs/protocol.md §6)."""

    def __init__(self, store: AsyncStore, recorder: Recorder, settle_s: float = 0.0):
        self.store, self.recorder, self.settle_s = store, recorder, settle_s
        self.since = time.monotonic()
        self._done: set[int] = set()

    async def rederive_used(self, period: int) -> None:
        if period in self._done:  # a retried step: nothing of ours was cut off since
            return
        await self.recorder.drained()
        wait = self.since + self.settle_s - time.monotonic()
        if wait > 0:
            log.info("period %d: its used is re-derived in %.0fs, once the previous leader's "
                     "requests are over", period, wait)
            await asyncio.sleep(wait)
        await self.store.rederive_used(period)
        self._done.add(period)


def settle_s(lease: Lease, poll_s: float) -> float:
    """How long after taking ``lease`` its previous holder is known dead: at once for SQLite's
    file lock, which only its holder's death (or release) frees; ``2 x poll + STOP_S`` for
    PostgreSQL's, which a live holder loses with its connection."""
    return 0.0 if isinstance(lease, FileLease) else 2 * poll_s + STOP_S


class PeriodLoop(Protocol):
    """What a replica uses of its validator (``core.validator.loop.Validator``)."""

    store: Store
    async_store: AsyncStore
    traffic: Traffic
    leading: bool  # whether this process runs the period loop (the organic API reads it)
    takeover: Takeover
    shards: Shards  # this process's part of each window

    @property
    def hotkey(self) -> str: ...

    async def periods(self, periods: int | None = None) -> None: ...

    async def follow(self) -> None: ...


async def lead_or_follow(validator: PeriodLoop, periods: int | None, poll_s: float = 5.0
                         ) -> None:
    """Run the period loop while this process holds the lease, follow the loop's plan while
    another does; returns when this process has run ``periods`` periods (None: never)."""
    lease = validator.store.lease(f"period-loop:{validator.hotkey}")
    while True:
        if await validator.async_store.call(lease.acquire):  # PostgreSQL: a round trip
            log.info("this process runs the period loop")
            validator.leading = True
            validator.takeover = Takeover(validator.async_store, validator.traffic.recorder,
                                          settle_s=settle_s(lease, poll_s))
            work = asyncio.create_task(validator.periods(periods))
            try:
                while not work.done():
                    await _beat(validator, poll_s)
                    await asyncio.wait({work}, timeout=poll_s)
                    if not work.done() and not await validator.async_store.call(lease.held):
                        log.error("the period loop's lease is lost (its database connection "
                                  "broke): stopping the loop here; a replica takes it over")
                        break
                else:
                    return work.result()
            finally:
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                validator.leading = False
                lease.release()
        await _beat(validator, poll_s)
        try:
            await validator.follow()
        except EXPECTED_FAILURES as e:
            log.warning("cannot follow the period loop's plan (%s: %s)", type(e).__name__, e)
        await asyncio.sleep(poll_s)


async def _beat(validator: PeriodLoop, poll_s: float) -> None:
    """This process is alive, and shares the windows that open (``shards.py``); while the
    database is away it is not, and the windows that open then are sent without it."""
    try:
        await validator.shards.beat(poll_s)
    except EXPECTED_FAILURES as e:
        log.warning("cannot say this process is alive (%s: %s)", type(e).__name__, e)
