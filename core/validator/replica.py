"""One validator as several processes (API replicas on one PostgreSQL database): each serves
organic traffic from the shared store and sends its part of each audit window (``shards.py``),
and exactly one runs the period loop (capacities, synthetic plan, scoring, weights), the one
holding the store's lease. The others try to take the lease every ``poll_s``; when its holder
dies, one of them has the loop within about that long.

What a process holds of the budgets for requests not recorded yet is held in its name in the
store (``Store.reserve``), and given back once that process is known dead (``give_back``): by the
process that runs the loop, at once for the loop's previous process when the lease is SQLite's
file lock (only its holder's death frees it), and every poll for the processes that have not
said they are alive within ``LIVE_POLLS`` of their own polls (by the database's clock). Nothing
a live process holds is given back, so the organic and window requests other processes have in
flight keep their reservations; a record of a request whose hold was given back (its process was
cut off, not dead) counts its units in full, so ``used == Σ records`` in any order
(docs/protocol.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Protocol

import aiohttp

from core.errors import Unavailable
from core.storage import AsyncStore, Store
from core.storage.sqlite import FileLease
from core.validator.shards import Shards

log = logging.getLogger("validator.replica")
# what the period loop and its followers meet in the ordinary course (the chain or the database
# away, a peer's connection gone): logged in a line; anything else also with its traceback
EXPECTED_FAILURES = (Unavailable, OSError, aiohttp.ClientError, TimeoutError)


class PeriodLoop(Protocol):
    """What a replica uses of its validator (``core.validator.loop.Validator``)."""

    store: Store
    async_store: AsyncStore
    leading: bool  # whether this process runs the period loop (the organic API reads it)
    shards: Shards  # this process among the validator's: its part of each window

    @property
    def hotkey(self) -> str: ...

    async def periods(self, periods: int | None = None) -> None: ...

    async def follow(self) -> None: ...


async def lead_or_follow(validator: PeriodLoop, periods: int | None, poll_s: float = 5.0
                         ) -> None:
    """Run the period loop while this process holds the lease, follow the loop's plan while
    another does; returns when this process has run ``periods`` periods (None: never). It says
    it is alive every ``poll_s`` all along, from a task of its own (``beating``)."""
    lease = validator.store.lease(f"period-loop:{validator.hotkey}")
    beats = asyncio.create_task(beating(validator.shards, poll_s))
    try:
        while True:
            # the lease: a round trip on PostgreSQL; the loop runs while it holds
            if (await validator.async_store.call(lease.acquire)
                    and await _lead(validator, lease, periods, poll_s)):
                return
            try:
                await validator.follow()
            except EXPECTED_FAILURES as e:
                log.warning("cannot follow the period loop's plan (%s: %s)", type(e).__name__, e)
            await asyncio.sleep(poll_s)
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats


async def _lead(validator: PeriodLoop, lease, periods: int | None, poll_s: float) -> bool:
    """Run the period loop while the lease holds: True once ``periods`` are run, False when the
    lease is lost (the loop stopped here)."""
    log.info("this process runs the period loop")
    validator.leading = True
    store, shards = validator.async_store, validator.shards
    try:
        before = await store.lead(shards.member, poll_s)
    except EXPECTED_FAILURES as e:
        log.warning("cannot mark this process as the loop's (%s: %s)", type(e).__name__, e)
        before = None
    # SQLite's lease is freed only by its holder's death: what it held goes back now
    await give_back(store, shards, dead=[before] if before and isinstance(lease, FileLease)
                    else ())
    work = asyncio.create_task(validator.periods(periods))
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=poll_s)
            if work.done():
                break
            if not await store.call(lease.held):
                log.error("the period loop's lease is lost (its database connection broke): "
                          "stopping the loop here; a replica takes it over")
                return False
            await give_back(store, shards)
        work.result()
        return True
    finally:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        validator.leading = False
        lease.release()


async def give_back(store: AsyncStore, shards: Shards, dead: Iterable[str] = ()) -> float:
    """Give back what the processes known dead hold of the budgets: ``dead``, and those that
    have not said they are alive within ``LIVE_POLLS`` of their polls (never this one). Returns
    the units given back."""
    try:
        holders = await store.holders() - {shards.member}
        stopped = (holders - set(await store.live())) | (holders & set(dead))
        units = await store.release(stopped) if stopped else 0.0
    except EXPECTED_FAILURES as e:
        log.warning("cannot give back what stopped processes held (%s: %s)",
                    type(e).__name__, e)
        return 0.0
    if stopped:
        log.info("gave back %.0f units of budgets held by %d stopped process(es)", units,
                 len(stopped))
    return units


async def beating(shards: Shards, poll_s: float) -> None:
    """Say this process is alive every ``poll_s``, whatever else it is doing (a slow chain read
    in ``follow`` must not make it look dead); while the database is away it is not, and the
    windows that open then are sent without it."""
    while True:
        try:
            await shards.beat(poll_s)
        except EXPECTED_FAILURES as e:
            log.warning("cannot say this process is alive (%s: %s)", type(e).__name__, e)
        await asyncio.sleep(poll_s)
