"""A period's synthetic requests (docs/protocol.md §3.4, §6): each launched at its planned time,
sent once its miner has a free slot (its own slots, taken before one of the
``--max-concurrency`` global slots, so a slow miner never holds the others'), only while it fits
its cap and the budget, and only while the store takes records; recorded in the slice it was
planned for however it ends (``core.validator.traffic``).

A miner's own slots hold twice what its window's plan keeps in flight at the expected speed
(plus ``--max-per-miner``): an honest miner never waits for them, and one whose answers run
slow (or that holds its connections open) fills them. A request still waiting for a slot a
slice after its window slice ended (``Window.send_by``) is not sent and counts as asked and not
served (``Outcome.LATE``), so a declared rate is only ever credited as far as it was asked.
The sender owns the period's in-flight set and limits; the loop begins them afresh each
period."""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time

from core import plan
from core.chain import Metagraph
from core.storage import AsyncStore
from core.synthetic import synthetic_request
from core.tasks import TASKS, Kind
from core.validator.book import PeriodBook, Reservation
from core.validator.counting import PromptCounter
from core.validator.settings import Settings
from core.validator.traffic import Attempt, Traffic, log_failures

# A miner's own slots: twice what its plan keeps in flight at the expected speed (an answer may
# take up to twice its expected time before it is a timeout), plus ``--max-per-miner``
SLOT_HEADROOM = 2.0


class Sender:
    def __init__(self, settings: Settings, traffic: Traffic, book: PeriodBook, store: AsyncStore,
                 counter: PromptCounter, rng: random.Random):
        self.settings, self.traffic, self.book, self.store = settings, traffic, book, store
        self.counter, self.rng = counter, rng
        self._gate = asyncio.Semaphore(settings.max_concurrency)
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._sizes: dict[str, int] = {}  # each miner's slots this period
        self.in_flight: set[asyncio.Task] = set()

    def begin(self) -> None:
        """Fresh concurrency limits and in-flight set for a period's synthetic requests."""
        self._gate = asyncio.Semaphore(self.settings.max_concurrency)
        self._gates, self._sizes = {}, {}
        self.in_flight = set()

    def make_room(self, metagraph: Metagraph, sends: list[plan.Send], seconds: float) -> None:
        """Grow each miner's slots to twice what ``sends`` (over ``seconds``) keep in flight at
        the expected speed, plus ``--max-per-miner``, and the client's connections to it as
        many; never shrink them within the period."""
        for hotkey, need in plan.miner_concurrency(sends, seconds).items():
            size = self.settings.max_per_miner + math.ceil(SLOT_HEADROOM * need)
            grow = size - self._sizes.get(hotkey, self.settings.max_per_miner)
            if grow > 0:
                gate = self._miner_gate(hotkey)
                self._sizes[hotkey] = size
                for _ in range(grow):
                    gate.release()
            neuron = metagraph.by_hotkey(hotkey)
            if neuron is not None:
                self.traffic.client.widen(neuron.endpoint, self._sizes.get(hotkey, size))

    async def sent(self) -> None:
        """Wait until every request launched so far has ended (and been recorded)."""
        while self.in_flight:
            await asyncio.wait(set(self.in_flight))

    async def schedule(self, metagraph: Metagraph, sends: list[plan.Send],
                       window: plan.Window | None = None, origin: float | None = None
                       ) -> list[asyncio.Task]:
        """Launch each send at its time (seconds after ``origin``, unix time; now by default),
        those of ``window`` no later than ``Window.send_by``; returns the requests launched."""
        unix0 = time.time() if origin is None else origin
        t0 = time.monotonic() - (time.time() - unix0)
        launched = []
        for s in sends:
            await asyncio.sleep(max(t0 + s.at - time.monotonic(), 0))
            planned_at = unix0 + s.at
            deadline = window.send_by(planned_at) if window else None
            task = asyncio.create_task(self.send_one(metagraph, s, planned_at, deadline))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            task.add_done_callback(lambda t: log_failures([t]))
            launched.append(task)
        return launched

    async def send_one(self, metagraph: Metagraph, s: plan.Send, planned_at: float,
                       deadline: float | None = None) -> bool:
        """Send one synthetic request once its miner has a free slot, if it still fits its cap
        and the budget; recorded (in the slice it was planned for) and settled however it ends
        (``Traffic``). Past ``deadline`` (unix time: ``Window.send_by``) it is recorded late,
        not sent. True if it was sent."""
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
            def attempt_for(reserved: Reservation | None) -> Attempt | None:
                return None if reserved is None else Attempt(
                    neuron, message, prompt, units, reserved.period, planned_at=planned_at,
                    held=reserved.held)

            attempt = attempt_for(await self.traffic.reserving(self.store.call(
                self.book.reserve, (c.hotkey, c.task), units, s.cap), attempt_for))
            if attempt is None:
                return False  # organic traffic served its part, or the budget is spent
            if deadline is not None and time.time() > deadline:
                await self.traffic.late(attempt)  # its slice is over: a rate not asked
                return False
            await self.traffic.send(attempt)
            return True

    def _miner_gate(self, hotkey: str) -> asyncio.Semaphore:
        if hotkey not in self._gates:
            self._gates[hotkey] = asyncio.Semaphore(self.settings.max_per_miner)
        return self._gates[hotkey]
