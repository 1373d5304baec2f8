"""What the miner's endpoints share: the workers, the per-validator ledger and slots, and the
chain's view (the head, and the metagraph at the current period's start block)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.capacity import clamp_declaration
from core.chain import Metagraph, SubtensorChain
from core.chain_time import BLOCK_SECONDS
from core.declaration import SignedDeclaration
from core.miner.latch import DeclarationLatch, WrongPeriod
from core.miner.limits import Ledger, Slots
from core.miner.pool import Pool
from core.transport.auth import Gate

# The next period's declaration is signed only this close to its start: a validator whose view of
# the chain is ahead of the miner's (the miner reads the head every --sync-interval, 12 s by
# default) is answered, and none can freeze a declaration long before its period begins.
NEXT_PERIOD_S = 60.0


@dataclass
class MinerState:
    """What the endpoints share: the declaration, the workers, limits and the cached metagraph."""

    hotkey: str
    pools: dict[str, Pool]
    chain: SubtensorChain
    gate: Gate
    period_blocks: int
    slots: Slots
    latch: DeclarationLatch  # the declaration signed for each period
    ledger: Ledger = field(default_factory=Ledger)
    metagraph: Metagraph | None = None
    synced_at: float = 0.0
    head: int = 0
    block_time: float = BLOCK_SECONDS

    def __post_init__(self):
        if self.latch.hotkey != self.hotkey:
            raise ValueError(f"the declarations are signed by {self.latch.hotkey}, "
                             f"not this miner's hotkey {self.hotkey}")

    def declaration(self) -> dict[str, float]:
        """What the healthy workers bring, clamped as validators will."""
        return clamp_declaration({task: pool.declared() for task, pool in self.pools.items()})

    def declared_in(self, period: int) -> dict[str, float]:
        """What this miner declared for ``period``: the declaration it signed, else what it
        would sign now. Each validator's share of it is what the miner serves that validator."""
        signed = self.latch.signed.get(period)
        return signed.declared() if signed is not None else self.declaration()

    def signed_declaration(self, asked: int | None) -> SignedDeclaration:
        """The declaration of period ``asked`` (None: the current one), signed once for the
        whole period (``core.miner.latch``). A period is signed when it is the current one or,
        in the current one's last NEXT_PERIOD_S, the next: the miner's view of the head may lag a
        validator's by its sync interval. WrongPeriod for any other."""
        period, left_s = self.period()
        if asked is None:
            asked = period
        if asked != period and not (asked == period + 1 and left_s <= NEXT_PERIOD_S):
            raise WrongPeriod(f"period {asked} is not this miner's current one ({period}), nor "
                              f"the next within {NEXT_PERIOD_S:g} s of its start")
        return self.latch.declare(asked, self.declaration)

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
