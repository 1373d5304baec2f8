"""One way to send a request to a miner, for the period loop and the organic API alike: whatever
happens (an answer, an error, a timeout, cancellation at the period's end, a client that leaves),
the request ends in exactly one record and one settlement of the units reserved for it, so that
for every contender ``used == Σ units of its records`` (docs/protocol.md, "Every request is
recorded").

Units are the validator's count (docs/protocol.md §5): the prompt by the task's tokenizer, the
completion as received, steps x images as requested; a record never holds more than was reserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import aiohttp

from core.chain import Neuron
from core.checking.service import Checker, Job
from core.protocol import (
    ChatChunk,
    ChatRequest,
    ChatTokens,
    ImageRequest,
    ImageResponse,
    TaskRequest,
)
from core.records import Outcome, RequestRecord
from core.scoring import speed_quality
from core.storage import StorageError, Store
from core.tasks import TASKS
from core.transport.client import SignedClient
from core.validator import dispatch, openings
from core.validator.counting import PromptCounter
from core.validator.recorder import Recorder
from core.validator.watch import StreamWatch

log = logging.getLogger("validator.traffic")
T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """A request to one miner with its units already reserved in ``reserved_in`` (their hold in
    the store: ``held``)."""

    neuron: Neuron
    message: TaskRequest
    prompt_tokens: int  # as counted here (chat), else 0
    reserved: int
    reserved_in: int
    organic: bool = False
    planned_at: float | None = None  # unix time it was planned for: its window slice (the miner's
    #                                  slowness, which can hold it at the validator, moves none)
    held: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.neuron.hotkey, self.message.task


@dataclass
class Result:
    """How an attempt ended: its record (set once it is stored) and, when it succeeded, what the
    miner answered."""

    record: RequestRecord | None = None
    answer: tuple[ChatTokens, ChatChunk] | ImageResponse | None = None
    tokens: ChatTokens = field(default_factory=ChatTokens)


class Traffic:
    def __init__(self, client: SignedClient, counter: PromptCounter, store: Store,
                 checker: Checker | None):
        self.client, self.counter, self.store, self.checker = client, counter, store, checker
        self.recorder = Recorder(store)

    def admits(self) -> bool:
        """Whether a new request may be sent: only while the store takes records
        (``Recorder.admits``), so that every request sent can be recorded."""
        return self.recorder.admits()

    def cost(self, message: TaskRequest) -> tuple[int, int]:
        """(prompt tokens as counted here, units to reserve): the most the request can cost, and
        never less than the miner reserves for it (``ChatRequest.units_allowance``)."""
        if isinstance(message, ChatRequest):
            prompt = self.counter.prompt_tokens(message)
            return prompt, max(prompt, message.prompt_allowance()) + message.max_tokens
        return 0, message.units

    async def send(self, attempt: Attempt) -> Result:
        """The whole exchange, recorded and settled. A chat answer is read in the pauses
        ``dispatch.pause`` allows: nobody waits for its lines."""
        result = Result()
        if isinstance(attempt.message, ChatRequest):
            async with contextlib.aclosing(self.chat(attempt, result, relay=False)) as arrivals:
                async for _ in arrivals:
                    pass
        else:
            await self._image(attempt, result)
        return result

    async def chat(self, attempt: Attempt, result: Result, *, relay: bool = True
                   ) -> AsyncGenerator[None, None]:
        """Yields each time tokens arrive (``result.tokens`` has them, for a client to relay),
        their lines' text checked against their ids before they are kept
        (``dispatch.ChatAnswer``). Each wait for the miner runs in the consuming task, bounded
        by the request's deadline and, after the first tokens, by CHAT_STALL_S; unless
        ``relay``, the reader pauses between reads (``dispatch.pause``). The record is written
        when the stream ends in any way."""
        message = attempt.message
        assert isinstance(message, ChatRequest)
        loop = asyncio.get_running_loop()
        started, at, begun = time.perf_counter(), attempt.planned_at or time.time(), loop.time()
        watch = StreamWatch(begun + dispatch.timeout_for(message.task, attempt.reserved),
                            dispatch.CHAT_STALL_S)
        # the earliest the answer's speed factor can fall: its expected time at ``min_tokens``
        expected_at = begun + TASKS[message.task].expected_seconds(
            attempt.prompt_tokens + message.min_tokens)
        answer = dispatch.ChatAnswer(message, attempt.prompt_tokens,
                                     self.counter.tokenizer(message.task),  # loaded: it counted
                                     result.tokens)
        outcome: Outcome | None = None
        try:
            async with dispatch.chat_answer(self.client, attempt.neuron, message) as body:
                try:
                    fed_at: float | None = None  # when tokens last came: a stall counts from it
                    while answer.final is None:
                        block = await watch.wait(body.readany(), fed_at)
                        if not block:
                            answer.end()  # the answer ended: its final line came, or it failed
                        elif answer.feed(block):
                            fed_at, watch.started = loop.time(), True
                            if relay:
                                yield
                                fed_at = loop.time()  # the client's time is not the miner's
                        elif fed_at is not None and loop.time() - fed_at > watch.stall:
                            raise TimeoutError  # bytes, but no tokens: still a stall
                        now = loop.time()
                        if not relay and answer.final is None and (wait := dispatch.pause(
                                message, len(result.tokens), expected_at - now)):
                            await asyncio.sleep(min(wait, watch.deadline - now))
                except (asyncio.CancelledError, GeneratorExit):
                    outcome = self._cut_off(answer, body)
                    if outcome is Outcome.OK and answer.final is not None:
                        result.answer = (result.tokens, answer.final)
                    raise
                outcome, result.answer = Outcome.OK, (result.tokens, answer.final)
                await dispatch.drain(body)
        except (asyncio.CancelledError, GeneratorExit):
            if outcome is None:
                outcome = self._gave_up(message.task, started, attempt.reserved)
            raise
        except Exception as e:
            outcome = dispatch.failure_outcome(e)
        finally:
            watch.close()
            served = attempt.prompt_tokens + len(result.tokens)
            await self._finish(attempt, outcome or Outcome.INVALID, served, started, at, result)

    @staticmethod
    def _cut_off(answer: dispatch.ChatAnswer, body: aiohttp.StreamReader) -> Outcome | None:
        """How a chat request cut off (cancelled, or its client gone) had ended by what had
        come: the lines waiting in the connection's buffer judged as any others (a lie in them
        is the miner's failure, a final line an answer); None if it had not ended."""
        rest = b""
        with contextlib.suppress(Exception):  # a connection already closed has nothing
            rest = body.read_nowait()
        try:
            answer.feed(rest)
        except Exception as e:
            return dispatch.failure_outcome(e)
        return Outcome.OK if answer.final is not None else None

    async def _image(self, attempt: Attempt, result: Result) -> None:
        started, at = time.perf_counter(), attempt.planned_at or time.time()
        outcome = Outcome.INVALID
        assert isinstance(attempt.message, ImageRequest)
        try:
            answer = await dispatch.image(self.client, attempt.neuron, attempt.message)
            if attempt.organic:  # an answer by reference: its client gets the full PNGs
                answer = await openings.with_images(self.client, attempt.neuron,
                                                    attempt.message, answer)
            result.answer, outcome = answer, Outcome.OK
        except asyncio.CancelledError:
            outcome = self._gave_up(attempt.message.task, started, attempt.reserved)
            raise
        except Exception as e:
            outcome = dispatch.failure_outcome(e)
        finally:
            await self._finish(attempt, outcome, attempt.reserved if outcome is Outcome.OK else 0,
                               started, at, result)

    async def reserving(self, call: Awaitable[T], attempt: Callable[[T], Attempt | None]) -> T:
        """The store's answer to ``call``, a reservation (``PeriodBook.reserve``, in a store
        thread, where it goes on whatever becomes of its caller). If the caller is cancelled
        while the store makes it, the reservation made is recorded as abandoned (``attempt``:
        the request it was for; nothing sent, nothing served) before the cancellation goes
        on, so that every reservation ends in a record (``used == Σ records``)."""
        made = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(made)
        except asyncio.CancelledError:
            cut = attempt(await made)
            if cut is not None:
                await self._finish(cut, Outcome.ABANDONED, 0, time.perf_counter(),
                                   cut.planned_at or time.time(), Result())
            raise

    async def late(self, attempt: Attempt) -> None:
        """Record a planned request not sent because its window slice ended while it waited for
        a slot (``Outcome.LATE``: asked, not served)."""
        await self._finish(attempt, Outcome.LATE, 0, time.perf_counter(),
                           attempt.planned_at or time.time(), Result())

    @staticmethod
    def _gave_up(task: str, started: float, units: int) -> Outcome:
        """A request the validator or its client stopped waiting for: the miner's failure only
        when it had already taken longer than the task's expected time."""
        late = time.perf_counter() - started > TASKS[task].expected_seconds(units)
        return Outcome.TIMEOUT if late else Outcome.ABANDONED

    async def _finish(self, attempt: Attempt, outcome: Outcome, served: int, started: float,
                      at: float, result: Result) -> None:
        """Record and settle: served units for a success or an abandoned request, the units
        asked for any failure, a refused signature included."""
        latency = time.perf_counter() - started
        if outcome in (Outcome.OK, Outcome.ABANDONED):
            units = min(served, attempt.reserved)
        else:
            units = attempt.reserved
        if outcome is not Outcome.OK:
            result.answer = None
        task = attempt.message.task
        quality = (speed_quality(task, latency, units)
                   if outcome is Outcome.OK and self.checker is None else None)
        record = RequestRecord(period=attempt.reserved_in, hotkey=attempt.neuron.hotkey, task=task,
                               organic=attempt.organic, outcome=outcome, units=units,
                               latency_s=latency, quality=quality, at=at)
        if outcome is Outcome.UNAUTHORIZED:
            log.warning("uid %d refused our signed request to %s (401/403) after admitting our "
                        "capacity call this period: counted as failed", attempt.neuron.uid, task)
        try:
            written = await self.recorder.finish(record, attempt.reserved, attempt.held)
        except StorageError as e:  # the journal is full: its reservation stays counted
            log.error("request to uid %d not recorded: %s", attempt.neuron.uid, e)
            return
        if written is None:  # in the journal, stored once the store is back; not checked
            return
        record_id, period = written
        result.record = replace(record, period=period)
        if result.answer is not None and self.checker:
            self.checker.offer(Job(record_id, period, task, attempt.message, result.answer,
                                   latency, units, neuron=attempt.neuron))


def log_failures(tasks) -> None:
    """Exceptions of finished send tasks, which gather(return_exceptions=True) would hide."""
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            log.error("a send failed outside its exchange", exc_info=t.exception())
