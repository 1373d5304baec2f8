"""Serving the validator's users (organic traffic, SPEC §3.3): route each request to a contender
with budget left, weighted by remaining budget and recent quality; on failure, try another
(bounded); count the units against the contender's budget like synthetic ones; record and sample
for checking.

A chat stream that breaks mid-way is finished by another miner: requests carry a seed, so a miner
running the same model repeats the same tokens, and the ones the client already has are skipped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp

from core.protocol import ChatChunk, ChatRequest, ChatToken, ImageRequest, ImageResponse
from core.records import Outcome, RequestRecord
from core.validator.dispatch import MinerFailed, chat_chunks, send, speed_quality, timeout_for

MAX_ATTEMPTS = 3


class NoCapacity(Exception):
    """No contender of the task has budget left for the request this period."""


class AllFailed(Exception):
    """Every miner tried failed the request."""


class Organic:
    def __init__(self, validator, max_attempts: int = MAX_ATTEMPTS, rng: random.Random | None = None):
        self.v = validator
        self.max_attempts = max_attempts
        self.rng = rng or random.Random()

    def _pick(self, task: str, units: float, tried: set[str]):
        book = self.v.book
        if book.period is None:
            raise NoCapacity(f"no period is planned yet for {task}")
        options = [(t, w) for t, w in book.candidates(task, units) if t.contender.hotkey not in tried]
        if not options:
            return None
        targets, weights = zip(*options)
        if sum(weights) <= 0:
            return self.rng.choice(targets)
        return self.rng.choices(targets, weights=weights)[0]

    def _attempts(self, task: str, units: float, tried: set[str]):
        """Contenders to try in turn (at most ``max_attempts``), each with ``units`` reserved in
        the period book, and the period they were reserved in; ``tried`` collects their hotkeys."""
        for _ in range(self.max_attempts):
            target = self._pick(task, units, tried)
            if target is None:
                return
            tried.add(target.contender.hotkey)
            key = (target.contender.hotkey, task)
            period = self.v.book.reserve(key, units)
            if period is not None:
                yield target.contender, key, period

    @staticmethod
    def _give_up(task: str, tried: set[str]) -> Exception:
        if not tried:
            return NoCapacity(f"no miner has {task} capacity left this period")
        return AllFailed(f"{len(tried)} miner(s) failed this request")

    def _quality(self, task: str, latency: float, units: float) -> float | None:
        """Without a checker, a success's quality is its speed factor at once."""
        if self.v.checker is not None:
            return None
        return speed_quality(task, latency, units)

    async def chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Token chunks as they arrive, then a final chunk with the units. Raises NoCapacity or
        AllFailed (before or during the stream) when no miner can finish it."""
        reserve = request.units_allowance()
        sent: list[ChatToken] = []
        tried: set[str] = set()
        for c, key, reserved_in in self._attempts(request.task, reserve, tried):
            neuron = self.v.book.metagraph.by_hotkey(c.hotkey)
            tokens: list[ChatToken] = []
            final = outcome = None
            started, at = time.perf_counter(), time.time()
            try:
                async with asyncio.timeout(timeout_for(c.task, reserve)):
                    async for chunk in chat_chunks(self.v.client, neuron, request):
                        tokens.extend(chunk.tokens)
                        if len(tokens) > len(sent):
                            fresh = tokens[len(sent):]
                            sent.extend(fresh)
                            yield ChatChunk(tokens=fresh)
                        if chunk.done:
                            final = chunk
            except MinerFailed as e:
                outcome = e.outcome
            except TimeoutError:
                outcome = Outcome.TIMEOUT
            except aiohttp.ClientError:
                outcome = Outcome.SERVER_ERROR
            latency = time.perf_counter() - started
            period = self.v.book.recording_period()
            if final is not None:
                self.v.book.settle(reserved_in, key, reserve, final.units)
                self.v.keep(RequestRecord(period, c.hotkey, c.task, True, Outcome.OK, final.units,
                                          latency, self._quality(c.task, latency, final.units), at),
                            request, (tokens, final))
                yield ChatChunk(done=True, prompt_tokens=final.prompt_tokens,
                                completion_tokens=len(sent))
                return
            self.v.keep(RequestRecord(period, c.hotkey, c.task, True, outcome, reserve, latency,
                                      None, at), request, None)
        raise self._give_up(request.task, tried)

    async def image(self, request: ImageRequest) -> ImageResponse:
        units = request.units
        tried: set[str] = set()
        for c, key, reserved_in in self._attempts(request.task, units, tried):
            record, answer = await send(self.v.client, self.v.book.metagraph.by_hotkey(c.hotkey),
                                        reserved_in, request, units, organic=True,
                                        speed_only=self.v.checker is None)
            record = replace(record, period=self.v.book.recording_period())
            self.v.book.settle(reserved_in, key, units, record.units)
            self.v.keep(record, request, answer)
            if answer is not None:
                return answer
        raise self._give_up(request.task, tried)
