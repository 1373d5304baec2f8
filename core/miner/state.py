"""What the miner's endpoints share: the workers, the per-validator ledger and slots, and the
chain's view (the head, and the metagraph at the current period's start block)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.capacity import clamp_declaration
from core.chain import Metagraph, SubtensorChain
from core.miner.limits import Ledger, Slots
from core.miner.pool import Pool
from core.transport.auth import Gate


@dataclass
class MinerState:
    """What the endpoints share: the declaration, the workers, limits and the cached metagraph."""

    hotkey: str
    pools: dict[str, Pool]
    chain: SubtensorChain
    gate: Gate
    period_blocks: int
    slots: Slots
    ledger: Ledger = field(default_factory=Ledger)
    metagraph: Metagraph | None = None
    synced_at: float = 0.0
    head: int = 0
    block_time: float = 12.0

    def declaration(self) -> dict[str, float]:
        """What the healthy workers bring, clamped as validators will."""
        return clamp_declaration({task: pool.declared() for task, pool in self.pools.items()})

    async def sync(self) -> None:
        """The chain's head, and the metagraph at the current period's start block: validators
        budget from the same stakes and permits (docs/protocol.md §3.1)."""
        head = await self.chain.block()
        self.metagraph = await self.chain.metagraph(head - head % self.period_blocks)
        self.block_time = await self.chain.block_time()
        self.head, self.synced_at = head, time.monotonic()

    def block(self) -> float:
        elapsed = time.monotonic() - self.synced_at
        return self.head + elapsed / self.block_time

    def period(self) -> tuple[int, float]:
        """The current period and the seconds left in it."""
        block = self.block()
        period = int(block // self.period_blocks)
        return period, ((period + 1) * self.period_blocks - block) * self.block_time
