"""The validator's period loop (docs/protocol.md §3): read the metagraph at the period's start
block, fetch capacities, open the period, send the background sample, run the audit windows the
blocks open, share each window's report with the other validators (§9), close the period and set
weights.

Every step of a period is stored as it happens (budgets when the period opens, each window as it
opens, each request when it ends, contender states when the period closes), so a restarted
validator resumes the period it was in: windows are found again from the block hashes and only
the part of one still to come is sent.

Its rooms: the period clock (``clock.py``: the head's period, window openings), the sender
(``sender.py``: a period's synthetic requests and their limits), the closer (``closer.py``:
scoring, states, weights); window reports travel through ``sharing.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import bittensor as bt

from core import plan
from core.budget import Contender
from core.chain import Metagraph, SubtensorChain
from core.checking.service import Checker
from core.period import open_period
from core.storage import AsyncStore, Store
from core.tasks import TASKS
from core.transport.client import SignedClient
from core.validator import openings
from core.validator.api import ApiServices
from core.validator.book import PeriodBook
from core.validator.clock import PeriodClock
from core.validator.closer import Closer
from core.validator.counting import PromptCounter
from core.validator.dispatch import fetch_capacities, timeout_for
from core.validator.metrics import ValidatorMetrics
from core.validator.peer import PeerServices
from core.validator.replica import EXPECTED_FAILURES
from core.validator.sender import Sender
from core.validator.settings import Settings
from core.validator.shards import Shards
from core.validator.sharing import Sharing
from core.validator.traffic import Traffic
from core.validator.weights import WeightSetter

log = logging.getLogger("validator")

# How long after its window's last slice (and the grace a request may wait, ``plan.Window.
# send_by``) a part may still be ending: its last requests' time limit, the longest any task's
# synthetic request has (``dispatch.timeout_for``), with a few seconds to record them
PART_END_S = max(timeout_for(t.id, t.units_per_synthetic) for t in TASKS.values()) + 5.0
# Connections kept to miners, idle ones included: a pool smaller than the subnet closes one
# miner's idle connection to open another's (scripts/bench_scoring.py, 256 miners, 64 in flight:
# a 128-connection pool dispatched 1,213 requests/s, one of 1,024 1,781/s)
POOL_CONNECTIONS = 1024


class Validator:
    def __init__(self, wallet: bt.Wallet, chain: SubtensorChain, store: Store, settings: Settings):
        self.wallet = wallet
        self.keypair = wallet.hotkey  # loaded once; signing with it is ~30x cheaper
        self.chain = chain
        self.store = store  # for the rooms that call it from threads, and for tests
        self.async_store = AsyncStore(store)  # this class's coroutines reach the database here
        self.settings = settings
        self.client = SignedClient(self.keypair, max_connections=max(
            POOL_CONNECTIONS, settings.max_concurrency * 2))
        self.book = PeriodBook(store)  # the current period, shared with the organic API
        self.leading = False  # whether this process runs the period loop (replica.py)
        # timing jitter, prompts, seeds and images: the system's secrets, never from the chain
        self.rng = random.SystemRandom()
        self.checker = None if settings.check == "off" else Checker(
            self.async_store, settings.check, rate=settings.check_rate,
            max_queue=settings.check_queue, opener=openings.opener(self.client, self.rng))
        self.counter = PromptCounter(settings.tokenizers)
        self.counter.load()  # a validator that cannot count what it pays for does not start
        self.traffic = Traffic(self.client, self.counter, store, self.checker)
        self.metrics = ValidatorMetrics(lambda: self.checker)
        self.sharing = Sharing(self.client, self.keypair, store, chain, self.metrics,
                               timeout_s=settings.report_timeout_s)
        self.weights = WeightSetter(chain, wallet, self.async_store, self.metrics,
                                    settings.weight_retries)
        self.clock = PeriodClock(chain, settings.period_blocks)
        self.sender = Sender(settings, self.traffic, self.book, self.async_store, self.counter,
                             self.rng)
        self.closer = Closer(settings, self.async_store, chain, self.weights, self.metrics)
        # this process among the validator's (replica.py): its holds, its part of each window
        self.shards = Shards(self.async_store, store.member)
        self._parts: set[asyncio.Task] = set()  # parts of windows the loop's process shared
        self.metagraph: Metagraph | None = None  # the current period's: who may fetch reports
        self._collecting: dict[int, asyncio.Task] = {}  # window block -> fetching others' reports

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    def peer_services(self) -> PeerServices:
        """What the peer endpoint uses of this validator, and nothing more."""
        return PeerServices(self.hotkey, lambda: self.metagraph, self.metrics,
                            self.sharing if self.settings.share_reports else None,
                            self.async_store)

    def api_services(self) -> ApiServices:
        """What the organic API uses of this validator, and nothing more."""
        return ApiServices(self.book, self.traffic, self.store, lambda: self.leading)

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
        budgets are in the shared store) until it ends, and send this process's part of each
        of its windows (``shards.py``) that has begun since the last call."""
        period = await self.async_store.latest_period()
        if period is None:
            return
        if period != self.book.period:
            metagraph = await self.chain.metagraph(period * self.settings.period_blocks)
            self.metagraph = metagraph  # any process on the database serves its reports
            self.book.open(period, await self.async_store.contenders(period), metagraph,
                           await self._recent_quality())
            self.sender.begin()
            log.info("serving period %d as planned by the process running the loop", period)
        for window in await self.async_store.windows(period):
            if window.started_at + window.seconds <= time.time() or self.metagraph is None:
                continue
            members = await self.async_store.window_members(window.block)
            if self.shards.member in members:  # shared with this process: its part, once
                part = asyncio.create_task(self._send_part(
                    window, list(self.book.contenders.values()), members, self.shards.member,
                    self.metagraph))
                self._parts.add(part)
                part.add_done_callback(self._parts.discard)

    async def _recent_quality(self) -> dict[tuple[str, str], float]:
        """Each scored contender's recent quality: the organic API's routing weight."""
        return {key: s.quality for key, s in (await self.async_store.states()).items()}

    async def close(self) -> None:
        self.traffic.recorder.flush()  # records of requests cut off by the stop
        await self.weights.close()
        await self.client.close()
        await self.chain.close()
        if self.checker:
            await self.checker.close()

    async def _step(self) -> int:
        """Run the current period if it is due (1), or wait for the next one (0)."""
        period, left = await self.clock.current()
        if self.metagraph is None:  # a start that waits for its period still answers its peers
            self.metagraph = await self.chain.metagraph(period * self.settings.period_blocks)
        info = await self.async_store.period(period)
        if info and info.finished:
            await asyncio.sleep(left)
            return 0
        if info is None and left < self.settings.min_period_share * await self.clock.period_s():
            log.info("period %d has %.0fs left: waiting for the next one", period, left)
            await asyncio.sleep(left)
            return 0
        await self.run_period(period)
        return 1

    async def close_unfinished(self) -> None:
        """Score the periods a previous run began but did not close (it stopped in them): what
        it recorded counts; nothing is sent for them any more."""
        period, _ = await self.clock.current()
        for old in await self.async_store.unfinished(before=period):
            log.info("closing period %d, left unfinished", old)
            await self.closer.close(old, await self.async_store.contenders(old),
                              await self.chain.metagraph(old * self.settings.period_blocks))

    async def run_period(self, period: int) -> None:
        """Open the period at its start block, send the background sample, follow its blocks
        and run every audit window they open (one open at the period's end runs to its end),
        then close it."""
        pb = self.settings.period_blocks
        metagraph = await self.chain.metagraph(period * pb)
        self.metagraph = metagraph
        resumed = await self.async_store.period(period) is not None
        contenders, share = await self._open(period, metagraph)
        _, left = await self.clock.current()
        self.book.open(period, contenders, metagraph, await self._recent_quality())
        self.sender.begin()
        background = plan.background_plan(contenders, left, self.settings.background, self.rng)
        log.info("period %d: %d contenders, share %.3f, %d background requests%s", period,
                 len(contenders), share, len(background), " (resumed)" if resumed else "")
        schedules = [asyncio.create_task(self.sender.schedule(metagraph, background))]
        try:
            await self._follow_blocks(period, contenders, metagraph, schedules)
            for task in schedules:  # nothing more goes out; what is out may finish, briefly
                task.cancel()
            drain = min(self.settings.max_drain_s, await self.clock.period_s() / 10)
            await asyncio.wait_for(self.sender.sent(), drain)
        except TimeoutError:
            log.info("period %d: %d requests still out at its end: cancelled", period,
                     len(self.sender.in_flight))
        finally:
            for task in schedules + list(self.sender.in_flight):
                task.cancel()
            pending = set(schedules) | self.sender.in_flight
            if pending:
                await asyncio.wait(pending)
        await self._gather_reports(period, contenders, metagraph)
        if self.checker:  # a check still queued after this counts for nothing: bound the wait
            await self.checker.drain(period, timeout=min(await self.clock.period_s() / 2,
                                                          self.settings.max_check_wait_s))
        await self.closer.close(period, contenders, metagraph)

    async def _open(self, period: int, metagraph: Metagraph) -> tuple[list[Contender], float]:
        """This period's contenders and share: from the store when resuming, else asked of the
        miners and stored now."""
        info = await self.async_store.period(period)
        if info is not None:
            return await self.async_store.contenders(period), info.share
        start = period * self.settings.period_blocks
        miners = [n for n in metagraph.neurons if n.hotkey != self.hotkey]
        signed = await fetch_capacities(self.client, miners, self.settings.capacity_timeout_s,
                                        self.chain.netuid, period)
        declared = {hotkey: d.declared() for hotkey, d in signed.items()}
        previous = [(c.hotkey, c.task) for c in await self.async_store.contenders(period - 1)]
        opening = open_period(metagraph, declared, previous, self.hotkey)
        stakes = {n.hotkey: n.stake for n in metagraph.validators() if n.stake > 0}
        await self.async_store.begin_period(
            period, start, await self.chain.block_hash(start), opening.share, time.time(),
            opening.contenders, stakes, signed.values())
        return opening.contenders, opening.share

    async def _follow_blocks(self, period: int, contenders: list[Contender],
                             metagraph: Metagraph, schedules: list[asyncio.Task]) -> None:
        """Watch each block of the period for a window opening (docs/protocol.md §3.3) and run
        the part of it still to come; return when the period, and a window open at its end,
        are over."""
        pb = self.settings.period_blocks
        w = plan.window_blocks(pb)
        start, end = period * pb, (period + 1) * pb
        block_time = await self.chain.block_time()
        noted = {x.block: x for x in await self.async_store.windows(period)}
        # blocks before ``seen`` are examined; the period ends at ``until``
        seen, until = start, end
        while True:
            head = await self.chain.block()
            if head >= until:
                return
            if head >= seen:
                for b in await self.clock.openings(seen, min(head + 1, end)):
                    until = max(until, b + w)
                    if head < b + w:
                        window = await self._note_window(period, b, head, block_time)
                        schedules.append(asyncio.create_task(
                            self._run_window(period, window, contenders, metagraph)))
                    elif b in noted and self.settings.share_reports:  # it ended while this
                        # process was away (a restart): its report now, not at the close
                        schedules.append(asyncio.create_task(self._share(
                            period, noted[b], contenders, metagraph,
                            await self.clock.period_end(period))))
                seen = head + 1
            await asyncio.sleep(min(block_time / 4, 1.0))

    async def _note_window(self, period: int, block: int, head: int,
                           block_time: float) -> plan.Window:
        seconds = plan.window_blocks(self.settings.period_blocks) * block_time
        window = await self.async_store.add_window(period, plan.Window(
            block, time.time() - (head - block) * block_time, seconds))
        log.info("period %d: audit window opened at block %d (%.0fs)", period, block, seconds)
        return window

    async def _run_window(self, period: int, window: plan.Window, contenders: list[Contender],
                          metagraph: Metagraph) -> None:
        """Every contender's full declared rate for what is left of ``window``, shared with the
        validator's other live processes (``shards.py``); once every part has ended, its
        report is stored and the others' are fetched."""
        members = await self.shards.share(period, window.block)
        parts = [self._send_part(window, contenders, members, self.shards.member, metagraph)]
        if len(members) > 1:
            parts.append(self._take_over(window, contenders, members, metagraph))
        await asyncio.gather(*parts)
        end = window.started_at + window.seconds
        await asyncio.sleep(max(end - time.time(), 0))
        if len(members) > 1 and not await self.shards.others_done(
                window.block, end + window.seconds / plan.SLICES + PART_END_S):
            log.warning("window at block %d: a process sharing it has not ended its part; "
                        "its report holds what was recorded", window.block)
        if self.settings.share_reports:
            await self._share(period, window, contenders, metagraph,
                              await self.clock.period_end(period))

    async def _take_over(self, window: plan.Window, contenders: list[Contender],
                         members: list[str], metagraph: Metagraph) -> None:
        """The parts of ``window`` that no process has begun two polls after it opened (their
        processes say they are alive but do not follow the loop): sent here, so that no miner
        is asked less than its rate because a process sharing the window did not send."""
        await asyncio.sleep(2 * self.shards.poll_s + 1)
        late = [m for m in await self.shards.unstarted(window.block) if m != self.shards.member]
        if late:
            log.warning("window at block %d: %d process(es) sharing it did not begin their "
                        "part; this process sends it", window.block, len(late))
        await asyncio.gather(*(self._send_part(window, contenders, members, m, metagraph)
                               for m in late))

    async def _send_part(self, window: plan.Window, contenders: list[Contender],
                         members: list[str], member: str, metagraph: Metagraph) -> None:
        """``member``'s part of ``window`` (``shards.py``), if this process is first to begin
        it: its contenders' full declared rate for what is left of the window; then notes the
        part ended, with the requests sent."""
        if not await self.shards.start(window.block, member):
            return
        mine = plan.shard(contenders, members, member)
        origin = time.time()  # the plan's time 0, whatever planning it takes
        remaining = window.started_at + window.seconds - origin
        sent = 0
        if remaining > 0 and mine:
            sends = plan.window_plan(mine, await self.async_store.call(self.book.used),
                                     self.settings.period_blocks, remaining,
                                     remaining / window.seconds, self.rng)
            need = plan.required_concurrency(sends, remaining)
            if need > self.settings.max_concurrency:
                log.warning("window at block %d needs ~%.0f requests in flight at production "
                            "speed, over --max-concurrency %d: what cannot be sent within its "
                            "slice counts as not served (add processes: docs/operations.md)",
                            window.block, need, self.settings.max_concurrency)
            self.sender.make_room(metagraph, sends, remaining)
            launched = await self.sender.schedule(metagraph, sends, window, origin)
            if launched:
                await asyncio.wait(launched)
            sent = sum(1 for t in launched
                       if not t.cancelled() and t.exception() is None and t.result())
        await self.shards.done(window.block, sent, member)

    async def _share(self, period: int, window: plan.Window, contenders: list[Contender],
                     metagraph: Metagraph, until: float, restart: bool = False) -> None:
        """Store this validator's report of ``window`` and fetch the others' until ``until``
        (unix time), unless that is under way (``restart``: anew, until ``until``)."""
        await self.sharing.own_report(period, window, contenders)
        task = self._collecting.get(window.block)
        if task is not None and not task.done():
            if not restart:
                return
            task.cancel()  # what it fetched is stored; a fetch it was in is asked again
        every = min(max(2 * self.settings.report_timeout_s, 1.0), window.seconds)
        self._collecting[window.block] = asyncio.create_task(self.sharing.collect(
            period, window.block, metagraph, until, every))

    async def _gather_reports(self, period: int, contenders: list[Contender],
                              metagraph: Metagraph) -> None:
        """At a period's end: this validator's report of every window of it, and a bounded wait
        for the others' still missing (they finish the same window at about the same time)."""
        if not self.settings.share_reports:
            return
        wait = min(self.settings.max_report_wait_s, await self.clock.period_s() / 10)
        windows = await self.async_store.windows(period)
        for window in windows:
            await self._share(period, window, contenders, metagraph, time.time() + wait,
                              restart=True)
        blocks = {w.block for w in windows}
        tasks = [t for b, t in self._collecting.items() if b in blocks]
        if tasks:
            await asyncio.wait(tasks, timeout=wait)
        for b in blocks:
            task = self._collecting.pop(b, None)
            if task is not None and not task.done():
                task.cancel()
