"""A period's close (docs/protocol.md §2, §4, §9): seal it, score it from what was measured and
pooled (``core.validator.measure``, ``core.period.close_period``), store every contender's
state, show the period's table, then set weights on chain and prune old records. The scoring
reads every record of the period, so it runs in the store's thread, off the event loop."""

from __future__ import annotations

import logging

from core.budget import Contender
from core.chain import Metagraph, SubtensorChain
from core.period import Closing, close_period
from core.storage import AsyncStore, Store
from core.validator.measure import declared_in, measure_period, unplanned
from core.validator.metrics import ValidatorMetrics
from core.validator.period_table import period_table
from core.validator.settings import Settings
from core.validator.weights import WeightSetter

log = logging.getLogger("validator")


class Closer:
    def __init__(self, settings: Settings, store: AsyncStore, chain: SubtensorChain,
                 weights: WeightSetter, metrics: ValidatorMetrics):
        self.settings, self.store, self.chain = settings, store, chain
        self.weights, self.metrics = weights, metrics

    async def close(self, period: int, contenders: list[Contender], metagraph: Metagraph
                    ) -> None:
        """Score the period and store every contender's state (``close_in_store``, in the
        store's thread), then set weights."""
        closing = await self.store.run(
            close_in_store, period, contenders, metagraph, self.settings, self.metrics)
        await self.weights.send(closing.weights, metagraph)
        await self.weights.watch(await self.chain.metagraph())
        await self.store.prune(period - self.settings.retention_periods)


def close_in_store(store: Store, period: int, contenders: list[Contender], metagraph: Metagraph,
                   settings: Settings, metrics: ValidatorMetrics) -> Closing:
    """A period's close up to its weights, blocking (a thread's work: ``Closer.close``):
    seal it, score it (``core.period.close_period``) with miners silent to this validator that
    declared to a peer as contenders too (``core.validator.measure``), store every contender's
    state, and show the period's table and metrics."""
    store.seal(period)  # a request still running is recorded in the next period
    if settings.share_reports:
        held = declared_in(store, period, store.reports(period))
        for hotkey, (a, b) in held.proofs.items():
            log.warning("period %d: %s signed two declarations (%s and %s): its period is "
                        "forfeited", period, hotkey, a.capacities, b.capacities)
        found = unplanned(held, contenders, metagraph)
        if found:
            log.info("period %d: %d contenders of miners silent to this validator that "
                     "declared to others", period, len(found))
            store.add_contenders(period, found)
            contenders = store.contenders(period)
    measured, poolings = measure_period(store, period, contenders, settings.period_blocks,
                                        pooled=settings.share_reports)
    closing = close_period(contenders, {k: o for k, (o, _) in measured.items()},
                           store.states(), metagraph.n_uids,
                           {k: n for k, (_, n) in measured.items()})
    for pooling in poolings:
        store.note_pooling(period, pooling)
        metrics.pooled(pooling)
    store.finish_period(period, closing.states)
    metrics.closed(period, closing.rows)
    print(period_table(period, store.windows(period), closing,
                       poolings={p.block: p for p in poolings}), flush=True)
    return closing
