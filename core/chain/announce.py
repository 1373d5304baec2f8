"""Announcing a neuron's endpoint on chain without ever stopping it: the chain refuses a re-serve
inside its serving rate limit whatever its content, so a neuron restarted within it (systemd
restarts in seconds) must keep running on the endpoint the chain holds and announce the new one
once the chain takes it."""

from __future__ import annotations

import asyncio
import logging

import bittensor as bt

from core.chain.errors import ChainError, RateLimited
from core.chain.subtensor import SubtensorChain

log = logging.getLogger("chain")

RETRY_BLOCKS = 10  # a refused announcement is tried again this many blocks later ...
MAX_RETRY_S = 60.0  # ... and at most this many seconds


async def keep_announced(chain: SubtensorChain, wallet: bt.Wallet, host: str, port: int) -> None:
    """Until the chain holds host:port for this hotkey: announce it, and retry a refusal (the
    rate limit, an outage) later with a warning; returns once it is held."""
    while True:
        try:
            if await chain.serve(wallet, host, port):
                log.info("announced %s:%d on subnet %d", host, port, chain.netuid)
            else:
                log.info("the chain already holds %s:%d for this hotkey", host, port)
            return
        except RateLimited as e:
            why = f"the chain's serving rate limit ({e})"
        except ChainError as e:
            why = str(e)
        try:
            delay = min(RETRY_BLOCKS * await chain.block_time(), MAX_RETRY_S)
        except ChainError:
            delay = MAX_RETRY_S
        log.warning("announcing %s:%d is refused for now: %s; serving on, trying again in %.0fs",
                    host, port, why, delay)
        await asyncio.sleep(delay)
