"""Serving the validator's users (organic traffic, docs/protocol.md §3.3): route each request to
a contender with budget left, weighted by remaining budget and recent quality; on failure, try
another (bounded); count the units against the contender's budget like synthetic ones; record
and sample for checking (``Traffic``: one record and one settlement per attempt, whatever the
client does).

A chat stream that breaks or stalls mid-way is finished by another miner: requests carry a seed,
so a miner running the same model repeats the same tokens, and the ones the client already has
are skipped.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

from core.budget import Contender
from core.chain import Neuron
from core.errors import Unavailable
from core.protocol import (
    ChatChunk,
    ChatRequest,
    ImageRequest,
    ImageResponse,
    TaskRequest,
)
from core.sampling_mix import ORGANIC, SamplingMix
from core.storage import StorageError
from core.validator.book import PeriodBook, Reservation
from core.validator.traffic import Attempt, Result, Traffic

MAX_ATTEMPTS = 3
# the longest a user's request waits on the store: a database away is a fast 503, not a 500 after
# the driver's own 10-22 s of connecting
STORE_TIMEOUT_S = 2.0
T = TypeVar("T")


class NoCapacity(Unavailable):
    """No contender of the task has budget left for the request this period."""


class AllFailed(Unavailable):
    """Every miner tried failed the request."""


class StoreAway(Unavailable):
    """The store failed, or did not answer within STORE_TIMEOUT_S: nothing can be served until
    it is back."""


async def from_store(call: Awaitable[T], timeout_s: float | None = STORE_TIMEOUT_S) -> T:
    """The store's answer to ``call`` (``store.io(...)``) within ``timeout_s``, or StoreAway. A
    call cut short goes on in the store's thread; the user's request does not wait for it, so a
    call whose effect must be settled by its caller (a reservation) is given no deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except (StorageError, TimeoutError) as e:
        raise StoreAway(f"the store is unavailable ({type(e).__name__})") from e


class Organic:
    def __init__(self, book: PeriodBook, traffic: Traffic, max_attempts: int = MAX_ATTEMPTS,
                 rng: random.Random | None = None, mix: SamplingMix = ORGANIC):
        self.book, self.traffic = book, traffic
        self.max_attempts = max_attempts
        self.rng = rng or random.Random()
        self.mix = mix  # what users ask for, for synthetic requests to ask the same

    def _pick(self, task: str, units: float, tried: set[str]) -> Contender | None:
        if self.book.period is None:
            raise NoCapacity(f"no period is planned yet for {task}")
        options = [(c, w) for c, w in self.book.candidates(task, units) if c.hotkey not in tried]
        if not options:
            return None
        contenders, weights = zip(*options)
        if sum(weights) <= 0:
            return self.rng.choice(contenders)
        return self.rng.choices(contenders, weights=weights)[0]

    async def _attempts(self, message: TaskRequest, tried: set[str]) -> AsyncIterator[Attempt]:
        """Attempts in turn (at most ``max_attempts``), each with the request's whole cost
        reserved in the period book; ``tried`` collects their hotkeys."""
        prompt, units = self.traffic.cost(message)
        for _ in range(self.max_attempts):
            if not self.traffic.admits():  # records wait for the store: none is added to them
                raise StoreAway("the store refuses request records; try again shortly")
            # no deadline: units reserved after the request gave up would never be settled (the
            # API's key check, just before, found the store answering within its deadline)
            def attempt_for(claimed: tuple[Neuron | None, Reservation | None] | None
                            ) -> Attempt | None:
                neuron, reserved = claimed or (None, None)
                if neuron is None or reserved is None:
                    return None
                return Attempt(neuron, message, prompt, units, reserved.period, organic=True,
                               held=reserved.held)

            claimed = await from_store(self.traffic.reserving(self.book.store.io(
                self._claim, message.task, units, tried), attempt_for), timeout_s=None)
            if claimed is None:
                return
            attempt = attempt_for(claimed)
            if attempt is not None:
                yield attempt

    def _claim(self, task: str, units: float, tried: set[str]
               ) -> tuple[Neuron | None, Reservation | None] | None:
        """The next miner to try and its units' reservation (None when they no longer fit),
        picked and reserved in one call (one trip to a thread on PostgreSQL); None when no
        contender is left."""
        contender = self._pick(task, units, tried)
        if contender is None:
            return None
        tried.add(contender.hotkey)
        neuron = self.book.metagraph.by_hotkey(contender.hotkey) if self.book.metagraph else None
        if neuron is None:  # the book's contenders come from its metagraph: never here
            return None, None
        return neuron, self.book.reserve((contender.hotkey, task), units)

    @staticmethod
    def _give_up(task: str, tried: set[str]) -> Exception:
        if not tried:
            return NoCapacity(f"no miner has {task} capacity left this period")
        return AllFailed(f"{len(tried)} miner(s) failed this request")

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Token chunks as they arrive, then a final chunk with the units (the prompt as counted
        here). Raises NoCapacity or AllFailed (before or during the stream) when no miner can
        finish it, StoreAway when the store cannot reserve its units."""
        self.mix.record(request)
        sent = 0  # tokens the client has (a retry with the same seed repeats them)
        tried: set[str] = set()
        async for attempt in self._attempts(request, tried):
            result = Result()
            async with aclosing(self.traffic.chat(attempt, result)) as stream:  # closed (and
                async for _ in stream:  # recorded) at once when our client goes away
                    if len(result.tokens) > sent:
                        fresh = result.tokens.span(sent)
                        sent = len(result.tokens)
                        yield fresh
            if result.answer is not None:
                yield ChatChunk(done=True, prompt_tokens=attempt.prompt_tokens,
                                completion_tokens=sent)
                return
        raise self._give_up(request.task, tried)

    async def image(self, request: ImageRequest) -> ImageResponse:
        tried: set[str] = set()
        async for attempt in self._attempts(request, tried):
            result = await self.traffic.send(attempt)
            if isinstance(result.answer, ImageResponse):
                return result.answer
        raise self._give_up(request.task, tried)
