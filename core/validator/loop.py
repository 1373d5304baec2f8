"""The validator's period loop (SPEC §3): sync, fetch capacities, plan, send, score, set weights.

Every step of a period is stored as it happens (the plan when the period starts, each request
when it ends, contender states when the period closes), so a restarted validator resumes the
period it was in: it rebuilds the plan from the store and sends only what is still missing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import aiohttp
import bittensor as bt

from core import plan
from core.budget import contenders, stake_share
from core.checking.service import Checker
from core.chain import Chain, ChainError, Metagraph
from core.records import period_outcomes
from core.scoring import ContenderState, advance, effective, weights
from core.storage import StorageError, Store
from core.transport.client import SignedClient
from core.validator.book import PeriodBook
from core.validator.counting import PromptCounter
from core.validator.dispatch import fetch_capacities
from core.validator.report import period_table
from core.tasks import TASKS
from core.validator.synthetic import min_units, synthetic_request
from core.validator.traffic import Attempt, Traffic, log_failures

log = logging.getLogger("validator")
# the chain or the database away: logged in a line; anything else also with its traceback
EXPECTED_FAILURES = (ChainError, StorageError, OSError, aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True)
class Settings:
    period_blocks: int = 300
    capacity_timeout_s: float = 12.0
    max_concurrency: int = 256  # synthetic requests in flight at once, all miners together
    max_per_miner: int = 16  # ... to one miner: a slow miner cannot hold the others' slots
    image_size: int = 1024
    retention_periods: int = 96
    min_period_share: float = 0.5  # a fresh start with less of the period left waits for the next
    weight_retries: int = 3
    max_backoff_s: float = 60.0
    max_check_wait_s: float = 120.0  # at a period's end, for its results still being checked
    check: str = "gpu"  # reference models: gpu (production), cpu (tiny, local subnet) or off
    check_rate: float = 0.1
    check_queue: int = 256
    tokenizers: str = "production"  # counting chat prompts: production, or tiny (local subnet)


class Validator:
    def __init__(self, wallet: bt.Wallet, chain: Chain, store: Store, settings: Settings):
        self.wallet = wallet
        self.keypair = wallet.hotkey  # loaded once; signing with it is ~30x cheaper
        self.chain = chain
        self.store = store
        self.settings = settings
        self.client = SignedClient(self.keypair, max_connections=settings.max_concurrency * 2)
        self.book = PeriodBook(store)  # the current period, shared with the organic API
        self.leading = False  # whether this process runs the period loop (replica.py)
        self.rng = random.Random()  # timing jitter and prompts: private, never from the chain
        self.checker = None if settings.check == "off" else Checker(
            store, settings.check, rate=settings.check_rate, max_queue=settings.check_queue)
        self.counter = PromptCounter(settings.tokenizers)
        self.counter.load()  # a validator that cannot count what it pays for does not start
        self.traffic = Traffic(self.client, self.counter, store, self.checker)

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    async def run(self, periods: int | None = None) -> None:
        """Run periods back to back (``periods``: that many; None: forever), then close."""
        try:
            await self.periods(periods)
        finally:
            await self.close()

    async def periods(self, periods: int | None = None) -> None:
        """The period loop itself: any failure of a step (the chain, the database, a bug) is
        logged and retried with backoff; it never ends the process."""
        done, failures = 0, 0
        while periods is None or done < periods:
            try:
                await self.close_unfinished()  # also a period whose close failed last time
                done += await self._step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # what was recorded stays; try again
                failures += 1
                delay = min(2 ** failures, self.settings.max_backoff_s)
                log.error("period step failed (%s: %s); retrying in %ds", type(e).__name__, e,
                          delay, exc_info=not isinstance(e, EXPECTED_FAILURES))
                await asyncio.sleep(delay)

    async def follow(self) -> None:
        """In a replica that does not run the loop: serve the period the loop planned (its
        targets are in the shared store) until it ends."""
        period = self.store.latest_period()
        if period is None or period == self.book.period:
            return
        metagraph = await self.chain.metagraph()
        self.book.open(period, self.store.targets(period), metagraph, self._recent_quality())
        log.info("serving period %d as planned by the process running the loop", period)

    def _recent_quality(self) -> dict[tuple[str, str], float]:
        """Each scored contender's recent quality: the organic API's routing weight."""
        return {key: s.quality for key, s in self.store.states().items() if s.window}

    async def close(self) -> None:
        await self.client.close()
        if self.checker:
            await self.checker.close()

    async def _step(self) -> int:
        """Run the current period if it is due (1), or wait for the next one (0)."""
        period, left = await self._current()
        info = self.store.period(period)
        if info and info["finished"]:
            await asyncio.sleep(left)
            return 0
        if info is None and left < self.settings.min_period_share * await self._period_s():
            log.info("period %d has %.0fs left: waiting for the next one", period, left)
            await asyncio.sleep(left)
            return 0
        await self.run_period(period)
        return 1

    async def close_unfinished(self) -> None:
        """Score the periods a previous run began but did not close (it stopped in them): what
        it recorded counts; nothing is sent for them any more."""
        period, _ = await self._current()
        for old in self.store.unfinished(before=period):
            log.info("closing period %d, left unfinished", old)
            self.store.rederive_used(old)  # reservations of requests cut off by a crash
            info = self.store.period(old)
            await self._close(old, self.store.targets(old), info["share"],
                              await self.chain.metagraph())

    async def _period_s(self) -> float:
        return self.settings.period_blocks * await self.chain.block_time()

    async def _current(self) -> tuple[int, float]:
        block = await self.chain.block()
        period = block // self.settings.period_blocks
        end = (period + 1) * self.settings.period_blocks
        return period, (end - block) * await self.chain.block_time()

    async def run_period(self, period: int) -> None:
        metagraph = await self.chain.metagraph()
        resumed = self.store.period(period) is not None
        targets, share = await self._plan(period, metagraph)
        if resumed:  # reservations of requests a crash cut off are not spent
            self.store.rederive_used(period)
        _, left = await self._current()
        deadline = time.monotonic() + left
        self.book.open(period, targets, metagraph, self._recent_quality())
        used = self.book.used()  # resuming, or after organic traffic served by other replicas
        sends = plan.schedule(targets, used, left, self.rng)
        need = plan.required_concurrency(sends, left)
        if need > self.settings.max_concurrency:
            log.warning("period %d: the plan needs ~%.0f requests in flight at production speed, "
                        "over --max-concurrency %d: it cannot all be sent in time",
                        period, need, self.settings.max_concurrency)
        log.info("period %d: %d contenders, share %.3f, %d synthetic requests planned%s",
                 period, len(targets), share, len(sends), " (resumed)" if any(used.values()) else "")
        await self.send_all(period, metagraph, sends, targets, deadline)
        await asyncio.sleep(max(deadline - time.monotonic(), 0))
        if self.checker:  # a check still queued after this counts for nothing: bound the wait
            await self.checker.drain(period, timeout=min(await self._period_s() / 2,
                                                          self.settings.max_check_wait_s))
        await self._close(period, targets, share, metagraph)

    async def _plan(self, period: int, metagraph: Metagraph) -> tuple[list[plan.Target], float]:
        """This period's targets: from the store when resuming, else drawn and stored now."""
        info = self.store.period(period)
        if info is not None:
            return self.store.targets(period), info["share"]
        start = period * self.settings.period_blocks
        block_hash = await self.chain.block_hash(start)
        share = stake_share(metagraph, self.hotkey)
        miners = [n for n in metagraph.neurons if n.hotkey != self.hotkey]
        declared = await fetch_capacities(self.client, miners, self.settings.capacity_timeout_s)
        audited = {key for key, s in self.store.states().items() if s.audited}
        targets = plan.targets(contenders(metagraph, declared, share), block_hash,
                               metagraph.block, self.settings.period_blocks, audited)
        self.store.begin_period(period, start, block_hash, share, time.time(), targets)
        return targets, share

    async def _send_one(self, period: int, metagraph: Metagraph, s: plan.Send) -> None:
        """Send one synthetic request once its miner has a free slot, if its units still fit
        the plan; recorded and settled however it ends (``Traffic``)."""
        c = s.target.contender
        message = synthetic_request(c.task, s.units, self.rng, self.settings.image_size,
                                    self.counter)
        prompt, units = self.traffic.cost(message)
        # the miner's own slots first: waiting for a slow miner never holds a slot of the others
        async with self._miner_gate(c.hotkey), self._gate:
            reserved_in = self.book.reserve((c.hotkey, c.task), units, cap=s.target.units)
            if reserved_in is None:
                return  # its planned units are used (organic traffic first), or its budget
            await self.traffic.send(Attempt(metagraph.by_hotkey(c.hotkey), message, prompt,
                                            units, reserved_in))

    def _miner_gate(self, hotkey: str) -> asyncio.Semaphore:
        if hotkey not in self._gates:
            self._gates[hotkey] = asyncio.Semaphore(self.settings.max_per_miner)
        return self._gates[hotkey]

    async def send_all(self, period: int, metagraph: Metagraph, sends: list[plan.Send],
                       targets: list[plan.Target], deadline: float) -> None:
        """Send each request at its time, then top up what chat answers left unused; at the
        deadline every request still waiting or running is cancelled (and recorded)."""
        self._gate = asyncio.Semaphore(self.settings.max_concurrency)
        self._gates: dict[str, asyncio.Semaphore] = {}
        in_flight: set[asyncio.Task] = set()

        def launch(s: plan.Send) -> None:
            task = asyncio.create_task(self._send_one(period, metagraph, s))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            task.add_done_callback(lambda t: log_failures([t]))

        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                t0 = time.monotonic()
                for s in sends:
                    await asyncio.sleep(max(t0 + s.at - time.monotonic(), 0))
                    launch(s)
                for _ in range(3):
                    if in_flight:
                        await asyncio.wait(set(in_flight))
                    top_up = self._top_up(targets)
                    if not top_up:
                        break
                    for s in top_up:
                        launch(s)
                if in_flight:
                    await asyncio.wait(set(in_flight))
        except TimeoutError:
            log.info("period %d: %d synthetic requests still out at its end: cancelled",
                     period, len(in_flight))
        finally:
            for task in list(in_flight):
                task.cancel()
            if in_flight:
                await asyncio.wait(set(in_flight))

    def _top_up(self, targets: list[plan.Target]) -> list[plan.Send]:
        """Chat answers may serve fewer units than planned (a shorter prompt, an early stop):
        what is still missing of ``f x budget``, so an honest miner shows all it can. Refused
        or failed requests count their full units, so a failing miner gets no more."""
        used = self.book.used()
        sends = []
        for t in targets:
            c = t.contender
            missing = min(t.units, c.budget) - used.get((c.hotkey, c.task), 0.0)
            if missing >= min_units(c.task):
                units = int(min(missing, TASKS[c.task].units_per_synthetic))
                sends.append(plan.Send(0.0, t, units))
        return sends

    async def _close(self, period: int, targets: list[plan.Target], share: float,
                     metagraph: Metagraph) -> None:
        """Score the period, store every contender's state, set weights."""
        self.store.seal(period)  # a request still running is recorded in the next period
        states = self.store.states()
        new_states: dict[tuple[str, str], ContenderState] = {}
        rows = []
        for t, outcome, n in period_outcomes(targets, self.store.records(period)):
            key = (t.contender.hotkey, t.contender.task)
            new_states[key] = advance(states.get(key, ContenderState()), outcome, share)
            rows.append((t, outcome, new_states[key], n))
        self.store.finish_period(period, new_states)
        eff = {(t.contender.uid, t.contender.task): effective(new_states[(t.contender.hotkey,
               t.contender.task)]) for t in targets}
        vector = weights(eff, len(metagraph.neurons))
        print(period_table(period, rows, vector), flush=True)
        await self._set_weights(vector)
        self.store.prune(period - self.settings.retention_periods)

    async def _set_weights(self, vector) -> None:
        """Once per epoch, never from an all-zero table, retried with backoff."""
        if vector.sum() <= 0:
            log.warning("no contender has effective capacity yet (no audit passed, or nothing "
                        "served): weights not set")
            return
        block = await self.chain.block()
        last = self.store.last_weights()
        if last is not None and block - last[0] < await self.chain.tempo():
            log.info("weights were set at block %d; next after one epoch", last[0])
            return
        weights_by_uid = {uid: float(w) for uid, w in enumerate(vector) if w > 0}
        for attempt in range(self.settings.weight_retries):
            try:
                await self.chain.set_weights(self.wallet, weights_by_uid)
                self.store.note_weights(block, time.time(), weights_by_uid)
                log.info("weights set at block %d for %d uids", block, len(weights_by_uid))
                return
            except Exception as e:
                delay = 2 ** attempt
                log.warning("setting weights failed (%s); retrying in %ds", e, delay)
                await asyncio.sleep(delay)
        log.error("weights not set after %d attempts", self.settings.weight_retries)
