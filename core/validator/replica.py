"""One validator as several processes (API replicas on one PostgreSQL database): each serves
organic traffic from the shared store, and exactly one runs the period loop (capacities,
synthetic plan, scoring, weights), the one holding the store's lease. The others try to take the
lease every ``poll_s``; when its holder dies, one of them has the loop within about that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from core.chain import ChainError
from core.storage import StorageError

log = logging.getLogger("validator.replica")


async def lead_or_follow(validator, periods: int | None, poll_s: float = 5.0) -> None:
    """Run the period loop while this process holds the lease, follow the loop's plan while
    another does; returns when this process has run ``periods`` periods (None: never)."""
    lease = validator.store.lease(f"period-loop:{validator.hotkey}")
    while True:
        if lease.acquire():
            log.info("this process runs the period loop")
            validator.leading = True
            work = asyncio.create_task(validator.periods(periods))
            try:
                while not work.done():
                    await asyncio.wait({work}, timeout=poll_s)
                    if not work.done() and not lease.held():
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
        try:
            await validator.follow()
        except (ChainError, StorageError, OSError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("cannot follow the period loop's plan (%s: %s)", type(e).__name__, e)
        await asyncio.sleep(poll_s)
