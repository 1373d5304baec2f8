"""Chain access behind one small interface (docs/protocol.md §3.1): the metagraph at a block,
blocks and their hashes, weights and serving. Two implementations: ``subtensor`` (bittensor,
production) and ``local`` (a subnet kept in a file, for development and tests)."""

from __future__ import annotations

from typing import Protocol

import bittensor as bt

from core.metagraph import Metagraph, Neuron

__all__ = ["Chain", "ChainError", "Metagraph", "Neuron", "connect"]


class ChainError(Exception):
    """The chain cannot be reached or used as asked; the message says which and why."""


class Chain(Protocol):
    netuid: int

    async def block(self) -> int: ...

    async def block_hash(self, block: int) -> str: ...

    async def block_time(self) -> float:
        """Seconds per block."""

    async def tempo(self) -> int:
        """Blocks per epoch: weights are set at most once per epoch."""

    async def metagraph(self, block: int | None = None) -> Metagraph:
        """The subnet at ``block`` (default: the head): a period's stakes, permits and
        registrations are read at its start block, by every validator and miner alike."""

    async def set_weights(self, wallet: bt.Wallet, weights: dict[int, float]) -> None:
        """Raises on failure; the caller retries."""

    async def serve(self, wallet: bt.Wallet, host: str, port: int) -> None:
        """Announce the endpoint a miner serves on."""

    async def close(self) -> None: ...


def connect(network: str, netuid: int) -> Chain:
    """A chain client: ``local:PATH`` for a local subnet file, else a bittensor network name or a
    ws(s):// endpoint."""
    if network.startswith("local:"):
        from core.chain.local import LocalChain

        return LocalChain(network.removeprefix("local:"))
    from core.chain.subtensor import SubtensorChain

    try:
        return SubtensorChain(network, netuid)
    except ValueError as e:  # bittensor's word on an unknown network name
        raise ChainError(str(e)) from None
