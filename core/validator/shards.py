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
from collections.abc import Sequence

from core import plan
from core.budget import Contender
from core.storage import AsyncStore

LIVE_POLLS = 3  # a process is alive while it said so within this many of its polls


class Shards:
    def __init__(self, store: AsyncStore, member: str):
        self.store = store
        self.member = member  # this process, as the store names it (``Store.member``)
        self.live_s = LIVE_POLLS * 5.0
        self._claimed: set[int] = set()  # windows whose part this process has begun

    async def beat(self, poll_s: float) -> None:
        """Say this process is alive (every ``poll_s``)."""
        self.live_s = LIVE_POLLS * poll_s
        await self.store.beat(self.member, time.time())

    async def share(self, period: int, block: int) -> list[str]:
        """As the window at ``block`` opens (the period loop's process): the processes alive
        now share it, this one always; a window shared before keeps its processes."""
        live = await self.store.live(time.time() - self.live_s)
        return await self.store.share_window(period, block, sorted({*live, self.member}))

    def mine(self, contenders: Sequence[Contender], members: Sequence[str]) -> list[Contender]:
        return plan.shard(contenders, members, self.member)

    def claim(self, block: int) -> bool:
        """True the first time this process takes its part of the window at ``block``: one
        that takes over the period loop inside a window does not send its part twice."""
        if block in self._claimed:
            return False
        self._claimed.add(block)
        return True

    async def done(self, block: int, requests: int) -> None:
        await self.store.shard_done(block, self.member, requests, time.time())

    async def others_done(self, block: int, until: float, every: float = 0.5) -> bool:
        """Wait until every process sharing the window at ``block`` has ended its part, or
        ``until`` (unix time); True if all have."""
        while True:
            if all(n is not None for n in (await self.store.shards(block)).values()):
                return True
            if time.time() >= until:
                return False
            await asyncio.sleep(min(every, max(until - time.time(), 0)))
