"""One validator as several processes (API replicas on one PostgreSQL database): each serves
organic traffic from the shared store and sends its part of each audit window (``shards.py``),
and exactly one runs the period loop (capacities, synthetic plan, scoring, weights), the one
holding the store's lease. The others try to take the lease every ``poll_s``; when its holder
dies, one of them has the loop within about that long.

What a process holds of the budgets for requests not recorded yet is held in its name in the
store (``Store.reserve``), and given back once that process is known dead (``give_back``): by the
process that runs the loop, at once for every other process when the lease is SQLite's file lock
(only its holder's death frees it), and every poll for the processes that have not said they are
alive within ``LIVE_POLLS`` polls. Nothing a live process holds is given back, so the organic and
window requests other processes have in flight keep their reservations; a record of a request
whose hold was given back (its process was cut off, not dead) counts its units in full, so
``used == Σ records`` in any order (docs/protocol.md §6).
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
from core.storage.sqlite import FileLease
from core.validator.shards import Shards
from core.validator.traffic import Traffic

log = logging.getLogger("validator.replica")
# what the period loop and its followers meet in the ordinary course (the chain or the database
# away, a peer's connection gone): logged in a line; anything else also with its traceback
EXPECTED_FAILURES = (Unavailable, OSError, aiohttp.ClientError, TimeoutError)


class PeriodLoop(Protocol):
    """What a replica uses of its validator (``core.validator.loop.Validator``)."""

    store: Store
    async_store: AsyncStore
    traffic: Traffic
    leading: bool  # whether this process runs the period loop (the organic API reads it)
    shards: Shards  # this process among the validator's: its part of each window

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
            await _beat(validator, poll_s)
            # a file lock's previous holder is dead: what it held goes back before the loop
            await give_back(validator.async_store, validator.shards,
                            everyone_else=isinstance(lease, FileLease))
            work = asyncio.create_task(validator.periods(periods))
            try:
                while not work.done():
                    await asyncio.wait({work}, timeout=poll_s)
                    if work.done():
                        break
                    if not await validator.async_store.call(lease.held):
                        log.error("the period loop's lease is lost (its database connection "
                                  "broke): stopping the loop here; a replica takes it over")
                        break
                    await _beat(validator, poll_s)
                    await give_back(validator.async_store, validator.shards)
                if work.done():
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


async def give_back(store: AsyncStore, shards: Shards, everyone_else: bool = False) -> float:
    """Give back what the processes known dead hold of the budgets: every process but this one
    (``everyone_else``), or those that have not said they are alive within ``LIVE_POLLS`` polls.
    Returns the units given back."""
    try:
        holders = await store.holders() - {shards.member}
        if not everyone_else:
            holders -= set(await store.live(time.time() - shards.live_s))
        units = await store.release(holders) if holders else 0.0
    except EXPECTED_FAILURES as e:
        log.warning("cannot give back what stopped processes held (%s: %s)",
                    type(e).__name__, e)
        return 0.0
    if holders:
        log.info("gave back %.0f units of budgets held by %d stopped process(es)", units,
                 len(holders))
    return units


async def _beat(validator: PeriodLoop, poll_s: float) -> None:
    """This process is alive, and shares the windows that open (``shards.py``); while the
    database is away it is not, and the windows that open then are sent without it."""
    try:
        await validator.shards.beat(poll_s)
    except EXPECTED_FAILURES as e:
        log.warning("cannot say this process is alive (%s: %s)", type(e).__name__, e)
