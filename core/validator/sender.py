"""A period's synthetic requests (docs/protocol.md §3.4, §6): each launched at its planned time,
sent once its miner has a free slot (``--max-per-miner``, taken before one of the
``--max-concurrency`` global slots, so a slow miner never holds the others'), only while it fits
its cap and the budget, and only while the store takes records; recorded in the slice it was
planned for however it ends (``core.validator.traffic``). The sender owns the period's
in-flight set and limits; the loop begins them afresh each period."""

from __future__ import annotations

import asyncio
import functools
import random
import time

from core import plan
from core.chain import Metagraph
from core.storage import AsyncStore
from core.synthetic import synthetic_request
from core.tasks import TASKS, Kind
from core.validator.book import PeriodBook
from core.validator.counting import PromptCounter
from core.validator.settings import Settings
from core.validator.traffic import Attempt, Traffic, log_failures


class Sender:
    def __init__(self, settings: Settings, traffic: Traffic, book: PeriodBook, store: AsyncStore,
                 counter: PromptCounter, rng: random.Random):
        self.settings, self.traffic, self.book, self.store = settings, traffic, book, store
        self.counter, self.rng = counter, rng
        self._gate = asyncio.Semaphore(settings.max_concurrency)
        self._gates: dict[str, asyncio.Semaphore] = {}
        self.in_flight: set[asyncio.Task] = set()

    def begin(self) -> None:
        """Fresh concurrency limits and in-flight set for a period's synthetic requests."""
        self._gate = asyncio.Semaphore(self.settings.max_concurrency)
        self._gates = {}
        self.in_flight = set()

    async def sent(self) -> None:
        """Wait until every request launched so far has ended (and been recorded)."""
        while self.in_flight:
            await asyncio.wait(set(self.in_flight))

    async def schedule(self, metagraph: Metagraph, sends: list[plan.Send]) -> list[asyncio.Task]:
        """Launch each send at its time (seconds from now); returns the requests launched."""
        t0, unix0 = time.monotonic(), time.time()
        launched = []
        for s in sends:
            await asyncio.sleep(max(t0 + s.at - time.monotonic(), 0))
            task = asyncio.create_task(self.send_one(metagraph, s, unix0 + s.at))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            task.add_done_callback(lambda t: log_failures([t]))
            launched.append(task)
        return launched

    async def send_one(self, metagraph: Metagraph, s: plan.Send, planned_at: float) -> bool:
        """Send one synthetic request once its miner has a free slot, if it still fits its cap
        and the budget; recorded (in the slice it was planned for) and settled however it ends
        (``Traffic``). True if it was sent."""
        c = s.contender
        build = functools.partial(synthetic_request, c.task, s.units, self.rng,
                                  self.settings.image_size, self.counter)
        # an image and its mask take 30-90 ms to make: off the event loop, like every other wait
        message = build() if TASKS[c.task].kind is Kind.CHAT else await asyncio.to_thread(build)
        prompt, units = self.traffic.cost(message)
        # the miner's own slots first: waiting for a slow miner never holds a slot of the others
        neuron = metagraph.by_hotkey(c.hotkey)
        if neuron is None:  # contenders come from this metagraph: never here
            return False
        async with self._miner_gate(c.hotkey), self._gate:
            if not self.traffic.admits():
                return False  # the store refuses records: nothing is sent it could not record
            reserved = await self.store.call(self.book.reserve, (c.hotkey, c.task), units, s.cap)
            if reserved is None:
                return False  # organic traffic served its part, or the budget is spent
            await self.traffic.send(Attempt(neuron, message, prompt, units, reserved.period,
                                            planned_at=planned_at, held=reserved.held))
            return True

    def _miner_gate(self, hotkey: str) -> asyncio.Semaphore:
        if hotkey not in self._gates:
            self._gates[hotkey] = asyncio.Semaphore(self.settings.max_per_miner)
        return self._gates[hotkey]
