"""Weights as the chain accepts them (docs/protocol.md §10): the vector a period's close
computed, sent once the subnet's settings, read from the chain at the head, allow it.

- **Re-registered uids get nothing**: a period's vector is indexed by the uids of the period's
  start; a uid whose hotkey at the head is another is left out (the chain would pay the new
  owner what the old one earned).
- **Version key**: this code's own (``WEIGHTS_VERSION_KEY``); when the subnet requires a newer
  one the chain refuses every vector, so none is sent and the log says to upgrade.
- **MinAllowedWeights**: a vector with fewer positive weights is padded with the smallest weight
  u16 can hold (1/65535 of the largest) on other uids. Yuma clips every weight to the
  stake-weighted median of the validators' weights for that uid, so a padding weight no majority
  shares earns its uid nothing.
- **WeightsSetRateLimit**: a vector the limit refuses now is sent at the first block it allows
  (the newest vector then), never retried blindly; a lost connection is retried with backoff.
- **Commit-reveal**: a commit is recorded as committed, and as revealed once the chain's
  weights for this validator hold the committed uids.
- **Activity cutoff**: the age of this validator's last weights on chain is a metric, and a
  loud log line once it passes 80% of the cutoff (past it the chain ignores them and this
  validator earns no dividends).
"""

from __future__ import annotations

import asyncio
import logging
import time

import bittensor as bt
import numpy as np

from core.chain import ChainError, Metagraph, RateLimited, SubtensorChain
from core.protocol import PROTOCOL_VERSION
from core.storage import Store
from core.validator.metrics import ValidatorMetrics

log = logging.getLogger("validator")

_major, _minor, _patch = (int(x) for x in PROTOCOL_VERSION.split("."))
# what this validator's weights carry: the subnet owner raises the chain's WeightsVersionKey to
# the release every validator must run
WEIGHTS_VERSION_KEY = 1000 * _major + 10 * _minor + _patch
U16_MAX = 65535
CUTOFF_WARNING = 0.8  # of the activity cutoff: warn from this age on


def pad(weights: dict[int, float], least: int, uids: list[int], own: int) -> dict[int, float]:
    """``weights`` with at least ``least`` positive entries: the others get the smallest weight
    u16 keeps (this validator's own uid first, then the lowest uids)."""
    missing = least - len(weights)
    if missing <= 0 or not weights:
        return weights
    dust = max(weights.values()) / U16_MAX
    candidates = [own] + sorted(u for u in uids if u != own)
    padded = dict(weights)
    for uid in candidates:
        if missing == 0:
            break
        if uid not in padded:
            padded[uid] = dust
            missing -= 1
    return padded


class WeightSetter:
    backoff_s = 1.0  # the first retry after a lost connection; doubled each time

    def __init__(self, chain: SubtensorChain, wallet: bt.Wallet, store: Store,
                 metrics: ValidatorMetrics, retries: int = 3):
        self.chain = chain
        self.wallet = wallet
        self.store = store
        self.metrics = metrics
        self.retries = retries
        self._deferred: asyncio.Task | None = None

    @property
    def hotkey(self) -> str:
        return self.wallet.hotkey.ss58_address

    async def send(self, vector: np.ndarray, metagraph: Metagraph) -> None:
        """Send the period's ``vector`` (by the uids of ``metagraph``, the period's start)."""
        if vector.sum() <= 0:
            log.warning("no contender has effective capacity yet (no window measured, or nothing "
                        "served): weights not set")
            self.metrics.weights.labels("skipped").inc()
            return
        head = await self.chain.metagraph()
        then = {n.uid: n.hotkey for n in metagraph.neurons}
        now = {n.uid: n.hotkey for n in head.neurons}
        weights = {}
        for uid, w in enumerate(vector):
            if w <= 0:
                continue
            if now.get(uid) != then.get(uid):
                log.info("uid %d was re-registered since the period began: it gets no weight",
                         uid)
                continue
            weights[uid] = float(w)
        me = head.by_hotkey(self.hotkey)
        if me is None:
            log.error("this validator's hotkey %s is not registered on subnet %d: weights not "
                      "set", self.hotkey, self.chain.netuid)
            self.metrics.weights.labels("failed").inc()
            return
        if not weights:
            log.warning("every weighted uid was re-registered: weights not set")
            self.metrics.weights.labels("skipped").inc()
            return
        rules = await self.chain.weight_rules()
        if rules.version_key > WEIGHTS_VERSION_KEY:
            log.error("subnet %d requires weights version key %d; this validator's is %d: "
                      "upgrade it (weights not set)", self.chain.netuid, rules.version_key,
                      WEIGHTS_VERSION_KEY)
            self.metrics.weights.labels("failed").inc()
            return
        weights = pad(weights, rules.min_allowed_weights, sorted(now), me.uid)
        if self._deferred is not None and not self._deferred.done():
            self._deferred.cancel()  # a newer vector replaces the one waiting
        wait = await self._blocks_to_wait(me.uid, rules.rate_limit, head.block)
        if wait > 0:
            self._defer(weights, wait)
            return
        await self._submit(weights)

    async def _blocks_to_wait(self, uid: int, rate_limit: int, block: int) -> int:
        if not rate_limit:
            return 0
        last = await self.chain.last_update(uid)
        return max(rate_limit - (block - last), 0) if last else 0

    def _defer(self, weights: dict[int, float], blocks: int) -> None:
        log.info("weights rate-limited for %d more blocks: sent then", blocks)
        self.metrics.weights.labels("deferred").inc()

        async def later() -> None:
            await asyncio.sleep(blocks * await self.chain.block_time())
            await self._submit(weights)

        self._deferred = asyncio.create_task(later())

    async def _submit(self, weights: dict[int, float]) -> None:
        for attempt in range(self.retries):
            try:
                sent = await self.chain.set_weights(self.wallet, weights, WEIGHTS_VERSION_KEY)
            except RateLimited as e:  # another process of this hotkey set them meanwhile
                log.warning("weights refused by the rate limit (%s)", e)
                self.metrics.weights.labels("failed").inc()
                return
            except ChainError as e:
                if e.name:  # the chain refused it: the same vector is refused again
                    log.error("weights refused by the chain: %s", e)
                    self.metrics.weights.labels("failed").inc()
                    return
                delay = self.backoff_s * 2 ** attempt
                log.warning("setting weights failed (%s); retrying in %.0fs", e, delay)
                await asyncio.sleep(delay)
                continue
            self.store.note_weights(sent.block, time.time(), weights, sent.reveal_round)
            result = "set" if sent.reveal_round is None else "committed"
            self.metrics.weights.labels(result).inc()
            log.info("weights %s at block %d for %d uids%s", result, sent.block, len(weights),
                     "" if sent.reveal_round is None else
                     f" (revealed at drand round {sent.reveal_round})")
            return
        log.error("weights not set after %d attempts", self.retries)
        self.metrics.weights.labels("failed").inc()

    async def watch(self, metagraph: Metagraph) -> None:
        """Whether a commit has been revealed, and how old this validator's weights are against
        the activity cutoff."""
        me = metagraph.by_hotkey(self.hotkey)
        if me is None:
            return
        pending = self.store.pending_commit()
        if pending is not None:
            block, weights, _ = pending
            if set(await self.chain.weights_of(me.uid)) == set(weights):
                self.store.note_revealed(block)
                self.metrics.weights.labels("revealed").inc()
                log.info("weights committed at block %d are revealed", block)
        rules = await self.chain.weight_rules()
        last = await self.chain.last_update(me.uid)
        age = metagraph.block - last
        self.metrics.weights_age.set(age)
        self.metrics.activity_cutoff.set(rules.activity_cutoff)
        if rules.activity_cutoff and age >= CUTOFF_WARNING * rules.activity_cutoff:
            log.error("this validator's weights on chain are %d blocks old; past the activity "
                      "cutoff (%d blocks) the chain ignores them and it earns no dividends",
                      age, rules.activity_cutoff)

    async def close(self) -> None:
        if self._deferred is not None and not self._deferred.done():
            self._deferred.cancel()
