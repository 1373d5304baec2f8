"""A validator's windows shared by its processes (docs/protocol.md §6): every process on the
validator's PostgreSQL database sends its part of each window (``core.plan.shard``) and records
it there, so a validator with more stake adds processes, or hosts, rather than a bigger event
loop. It runs on the replica machinery (``core.validator.replica``): each process says it is
alive every poll, the one running the period loop names the processes alive as a window opens,
and reports the window once every part has ended. On SQLite, or alone, the one process sends
the whole window."""

from __future__ import annotations

import asyncio
import time

from core.storage import AsyncStore


class Shards:
    def __init__(self, store: AsyncStore, member: str):
        self.store = store
        self.member = member  # this process, as the store names it (``Store.member``)
        self.poll_s = 5.0  # how often it says it is alive (``beat``)
        self._asked: set[tuple[int, str]] = set()  # (window block, part) asked to begin

    async def beat(self, poll_s: float) -> None:
        """Say this process is alive (every ``poll_s``)."""
        self.poll_s = poll_s
        await self.store.beat(self.member, poll_s)

    async def share(self, period: int, block: int) -> list[str]:
        """As the window at ``block`` opens (the period loop's process): the processes alive
        now share it, this one always; a window shared before keeps its processes."""
        live = await self.store.live()
        return await self.store.share_window(period, block, sorted({*live, self.member}))

    async def start(self, block: int, member: str | None = None) -> bool:
        """Begin ``member``'s part (this process's own by default) of the window at ``block``:
        True if it is this process's to send, once (a process that takes over the loop inside a
        window, or a part another has taken over, is not sent twice). A part this process has
        asked for before is not asked of the store again (``follow`` sees a window every
        poll)."""
        key = (block, member or self.member)
        if key in self._asked:
            return False
        self._asked.add(key)
        return await self.store.start_shard(block, key[1], self.member)

    async def unstarted(self, block: int) -> list[str]:
        """The parts of the window at ``block`` nobody has begun: their processes are alive by
        their beats but not following the loop (a chain read failing, say)."""
        return await self.store.unstarted(block)

    async def done(self, block: int, requests: int, member: str | None = None) -> None:
        await self.store.shard_done(block, member or self.member, requests, time.time())

    async def others_done(self, block: int, until: float, every: float = 0.5) -> bool:
        """Wait until every process sharing the window at ``block`` has ended its part, or
        ``until`` (unix time); True if all have."""
        while True:
            if all(n is not None for n in (await self.store.shards(block)).values()):
                return True
            if time.time() >= until:
                return False
            await asyncio.sleep(min(every, max(until - time.time(), 0)))
