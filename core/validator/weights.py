"""Weights as the chain accepts them (docs/protocol.md §10): the vector a period's close
computed, sent once the subnet's settings, read from the chain at the head, allow it.

- **Re-registered uids get nothing**: a period's vector is indexed by the uids of the period's
  start; a uid whose hotkey at the head is another is left out (the chain would pay the new
  owner what the old one earned).
- **Version key**: this code's own (``WEIGHTS_VERSION_KEY``); when the subnet requires a newer
  one the chain refuses every vector, so none is sent and the log says to upgrade.
- **MinAllowedWeights**: a vector with fewer weights is padded with the smallest weight u16 can
  hold (1/65535 of the largest) on the validator's own uid (a self-weight, masked by the chain)
  and on other uids in an order of its own. Yuma clips every weight to the stake-weighted median
  of the validators' weights for that uid, so padding no majority of stake shares earns its uid
  nothing. Where the subnet's max-weight limit would lift the padding to the real weights' level
  (fewer scored uids than 1 / the limit), nothing is sent and the log says why.
- **WeightsSetRateLimit**: a vector the limit refuses now is sent at the first block it allows
  (the newest vector then, checked against the head anew), never retried blindly; a lost
  connection or a transaction the pool dropped is retried with backoff, a refusal the chain
  names is not.
- **Commit-reveal**: a commit is recorded as committed, and as revealed once the chain's
  weights for this validator are the committed vector as the chain quantises it.
- **Activity cutoff**: the age of this validator's last weights on chain is a metric, and a
  loud log line once it passes 80% of the cutoff (past it the chain ignores them and this
  validator earns no dividends).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import bittensor as bt
import numpy as np
from bittensor.intents.weights import clip_to_max_weight, normalize
from bittensor.settings import U16_MAX

from core.chain import ChainError, Metagraph, RateLimited, SubtensorChain
from core.protocol import PROTOCOL_VERSION
from core.storage import AsyncStore
from core.validator.metrics import ValidatorMetrics

log = logging.getLogger("validator")

_major, _minor, _patch = (int(x) for x in PROTOCOL_VERSION.split("."))
# what this validator's weights carry: the subnet owner raises the chain's WeightsVersionKey to
# the release every validator must run
WEIGHTS_VERSION_KEY = 1000 * _major + 10 * _minor + _patch
CUTOFF_WARNING = 0.8  # of the activity cutoff: warn from this age on


def pad(weights: dict[int, float], least: int, uids: list[int], own: int,
        hotkey: str) -> dict[int, float]:
    """``weights`` with at least ``least`` entries the chain keeps: entries u16 rounds to 0 are
    dropped, then the missing ones are the smallest weight u16 keeps on this validator's own uid
    (a self-weight: the chain masks it) and on other uids in an order of this validator's own
    (``hotkey`` seeds it), so no majority of stake pads the same uids and consensus clips the
    padding to nothing."""
    top = max(weights.values(), default=0.0)
    kept = {u: w for u, w in weights.items() if top and round(w / top * U16_MAX) > 0}
    missing = least - len(kept)
    if missing <= 0 or not kept:
        return kept
    others = sorted(u for u in uids if u != own and u not in kept)
    random.Random(hotkey).shuffle(others)
    padded = dict(kept)
    for uid in [own, *others] if own not in kept else others:
        if missing == 0:
            break
        padded[uid] = top / U16_MAX
        missing -= 1
    return padded


def quantised(weights: dict[int, float], max_weight: float) -> dict[int, int]:
    """``weights`` as bittensor's SetWeights sends them: clipped to the subnet's max weight,
    max-upscaled to u16, zeros dropped."""
    uids = sorted(weights)
    floats = [weights[u] for u in uids]
    if max_weight < 1 and len(uids) > 1:
        floats = clip_to_max_weight(floats, max_weight)
    return dict(zip(*normalize(uids, floats)))


class WeightSetter:
    backoff_s = 1.0  # the first retry after a lost connection; doubled each time

    def __init__(self, chain: SubtensorChain, wallet: bt.Wallet, store: AsyncStore,
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
        """Send the period's ``vector`` (by the uids of ``metagraph``, the period's start), now
        or, under the rate limit, at the first block it allows."""
        if self._deferred is not None and not self._deferred.done():
            self._deferred.cancel()  # a newer vector replaces the one waiting
        if vector.sum() <= 0:
            log.warning("no contender has effective capacity yet (no window measured, or nothing "
                        "served): weights not set")
            self.metrics.weights.labels("skipped").inc()
            return
        weights = {uid: float(w) for uid, w in enumerate(vector) if w > 0}
        then = {n.uid: n.hotkey for n in metagraph.neurons}
        await self._send(weights, then, may_defer=True)

    async def _send(self, weights: dict[int, float], then: dict[int, str],
                    may_defer: bool) -> None:
        """Checked against the head as it is now: the uids still held by the hotkeys they were
        scored as, the subnet's settings, the rate limit."""
        head = await self.chain.metagraph()
        now = {n.uid: n.hotkey for n in head.neurons}
        for uid in [u for u in weights if now.get(u) != then.get(u)]:
            log.info("uid %d was re-registered since the period began: it gets no weight", uid)
            del weights[uid]
        me = head.by_hotkey(self.hotkey)
        if me is None:
            return self._fail("this validator's hotkey %s is not registered on subnet %d: "
                              "weights not set", self.hotkey, self.chain.netuid)
        if not weights:
            log.warning("every weighted uid was re-registered: weights not set")
            self.metrics.weights.labels("skipped").inc()
            return None
        rules = await self.chain.weight_rules()
        if rules.version_key > WEIGHTS_VERSION_KEY:
            return self._fail("subnet %d requires weights version key %d; this validator's is "
                              "%d: upgrade it (weights not set)", self.chain.netuid,
                              rules.version_key, WEIGHTS_VERSION_KEY)
        if rules.min_allowed_weights > len(now):
            return self._fail("subnet %d requires %d weights and has %d uids: weights not set",
                              self.chain.netuid, rules.min_allowed_weights, len(now))
        real = len(weights)
        if real < rules.min_allowed_weights and real * rules.max_weight < 1:
            # the chain's max-weight clip would lift the padding to the real weights' level
            return self._fail("subnet %d requires %d weights, each at most %.3f of the total: "
                              "padding %d scored uids would pay the padded ones (weights not "
                              "set)", self.chain.netuid, rules.min_allowed_weights,
                              rules.max_weight, real)
        weights = pad(weights, rules.min_allowed_weights, sorted(now), me.uid, self.hotkey)
        wait = await self._blocks_to_wait(me.uid, rules.rate_limit, head.block)
        if wait > 0 and may_defer:
            self._defer(weights, then, wait)
            return None
        await self._submit(weights)
        return None

    def _fail(self, message: str, *args) -> None:
        log.error(message, *args)
        self.metrics.weights.labels("failed").inc()

    async def _blocks_to_wait(self, uid: int, rate_limit: int, block: int) -> int:
        if not rate_limit:
            return 0
        last = await self.chain.last_update(uid)
        return max(rate_limit - (block - last), 0) if last else 0

    def _defer(self, weights: dict[int, float], then: dict[int, str], blocks: int) -> None:
        log.info("weights rate-limited for %d more blocks: sent then", blocks)
        self.metrics.weights.labels("deferred").inc()

        async def later() -> None:
            try:
                await asyncio.sleep(blocks * await self.chain.block_time())
                await self._send(weights, then, may_defer=False)  # the head checked anew
            except ChainError as e:
                self._fail("weights deferred by the rate limit not set: %s", e)

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
                if e.final:  # the chain refused it, or its fate is unknown: not sent again
                    log.error("weights not set: %s", e)
                    self.metrics.weights.labels("failed").inc()
                    return
                delay = self.backoff_s * 2 ** attempt
                log.warning("setting weights failed (%s); retrying in %.0fs", e, delay)
                await asyncio.sleep(delay)
                continue
            await self.store.note_weights(sent.block, time.time(), weights, sent.reveal_round)
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
        rules = await self.chain.weight_rules()
        pending = await self.store.pending_commit()
        if pending is not None:
            block, weights, _ = pending
            if await self.chain.weights_of(me.uid) == quantised(weights, rules.max_weight):
                await self.store.note_revealed(block)
                self.metrics.weights.labels("revealed").inc()
                log.info("weights committed at block %d are revealed", block)
        last = await self.chain.last_update(me.uid)
        if not last:
            log.warning("this validator has no weights on chain yet")
            return
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
