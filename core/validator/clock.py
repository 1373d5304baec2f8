"""The period clock (docs/protocol.md §2, §3.3): where the chain's head is in its period, how
long a period lasts and when it ends, and which blocks open an audit window, drawn from block
hashes kept for the look-back the draws need."""

from __future__ import annotations

import time

from core import plan
from core.chain import ChainError, SubtensorChain


class PeriodClock:
    def __init__(self, chain: SubtensorChain, period_blocks: int):
        self.chain, self.period_blocks = chain, period_blocks
        self._hashes: dict[int, str] = {}  # recent block hashes: window draws look back

    async def current(self) -> tuple[int, float]:
        """The period the head is in, and the seconds left of it."""
        block = await self.chain.block()
        period = block // self.period_blocks
        end = (period + 1) * self.period_blocks
        return period, (end - block) * await self.chain.block_time()

    async def period_s(self) -> float:
        return self.period_blocks * await self.chain.block_time()

    async def period_end(self, period: int) -> float:
        """The unix time ``period`` ends, from the head's block and the block time."""
        head = await self.chain.block()
        block_time = await self.chain.block_time()
        return time.time() + ((period + 1) * self.period_blocks - head) * block_time

    async def openings(self, lo: int, hi: int) -> list[int]:
        """Blocks in [lo, hi) that open a window, from their hashes (and enough earlier ones to
        know whether a window was open at ``lo``)."""
        pb = self.period_blocks
        back = 2 * plan.window_blocks(pb)
        first = lo - back
        for _ in range(64):
            hashes = [await self.block_hash(b) for b in range(first, hi)]
            anchor, opened = plan.openings(first, hashes, pb)
            if anchor <= lo:
                return [b for b in opened if b >= lo]
            first -= back
        raise ChainError(f"no block before {lo} settles whether a window is open there")

    async def block_hash(self, block: int) -> str:
        if block not in self._hashes:
            self._hashes[block] = await self.chain.block_hash(block)
            if len(self._hashes) > 4 * self.period_blocks:
                for old in sorted(self._hashes)[:self.period_blocks]:
                    del self._hashes[old]
        return self._hashes[block]
