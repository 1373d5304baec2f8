"""A validator with a planned period for the organic API's tests: its book holds the contenders
its loop would plan from the miners' declarations (``CONFIG``)."""

from __future__ import annotations

from core.budget import contenders
from core.miner.config import MinerConfig, TaskEntry
from core.validator.loop import Validator
from core.validator.settings import Settings

CONFIG = MinerConfig(tasks={"chat-llama-3": TaskEntry(capacity=50_000),
                            "proteus-text-to-image": TaskEntry(capacity=2_000)})


async def open_period(chain, wallet, store, quality, config: MinerConfig = CONFIG) -> Validator:
    """A validator whose book holds period 7's contenders: every miner with an endpoint,
    declaring ``config``."""
    v = Validator(wallet, chain.chain(), store, Settings(check="off", tokenizers="tiny"))
    graph = await v.chain.metagraph()
    declared = {n.hotkey: config.declaration() for n in graph.neurons if n.endpoint}
    cs = contenders(graph, declared, 1.0)
    store.begin_period(7, 7 * 300, "0x0", 1.0, 0.0, cs)
    v.book.open(7, cs, graph, quality)
    return v
