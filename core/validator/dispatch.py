"""Sending one request to a miner and classifying what came back (SPEC §4 outcomes)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time

import aiohttp
from pydantic import ValidationError

from core.capacity import clamp_declaration
from core.chain import Neuron
from core.protocol import (CAPACITY_PATH, MAJOR, CapacityRequest, CapacityResponse, ChatChunk,
                           ChatRequest, ChatToken, ImageResponse, Message, major_of, task_path)
from core.records import Outcome, RequestRecord
from core.scoring import speed_factor
from core.tasks import TASKS
from core.transport.client import SignedClient

log = logging.getLogger("validator.dispatch")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def fetch_capacities(client: SignedClient, neurons: list[Neuron],
                           timeout: float) -> dict[str, dict[str, float]]:
    """Every serving neuron's clamped declaration, asked concurrently; silent or mismatched
    miners are left out."""

    async def one(n: Neuron) -> tuple[str, dict[str, float]] | None:
        try:
            reply = await client.post(n.endpoint, CAPACITY_PATH, n.hotkey, CapacityRequest(), timeout)
            if reply.status != 200:
                log.info("uid %d: capacity answered %d", n.uid, reply.status)
                return None
            answer = CapacityResponse.model_validate_json(reply.body)
        except (asyncio.TimeoutError, aiohttp.ClientError, ValidationError) as e:
            log.info("uid %d: no capacity (%s)", n.uid, type(e).__name__)
            return None
        if major_of(answer.version) != MAJOR or answer.hotkey != n.hotkey:
            log.info("uid %d: skipped (version %s)", n.uid, answer.version)
            return None
        return n.hotkey, clamp_declaration(answer.capacities)

    results = await asyncio.gather(*(one(n) for n in neurons if n.endpoint))
    return dict(r for r in results if r)


def timeout_for(task_id: str, units: float) -> float:
    """Past twice the expected time the speed factor is 0: waiting longer earns nothing."""
    return 2 * TASKS[task_id].expected_seconds(units) + 2.0


def speed_quality(task: str, latency: float, units: float) -> float:
    """A success's quality when no checker runs: its speed factor alone."""
    return speed_factor(latency, TASKS[task].expected_seconds(units))


async def send(client: SignedClient, neuron: Neuron, period: int, message: Message,
               units: int, *, organic: bool = False,
               speed_only: bool = False) -> tuple[RequestRecord, object]:
    """Send one request; its record (outcome, units, latency) and, when it succeeded, what the
    miner answered (for checking). ``speed_only`` sets the quality of a success to its speed
    factor at once, for validators that run no checker."""
    task = message.task
    started, at = time.perf_counter(), time.time()
    answer = None
    try:
        outcome, served, answer = await asyncio.wait_for(
            _exchange(client, neuron, message), timeout_for(task, units))
    except asyncio.TimeoutError:
        outcome, served = Outcome.TIMEOUT, 0
    except aiohttp.ClientError:
        outcome, served = Outcome.SERVER_ERROR, 0
    latency = time.perf_counter() - started
    ok = outcome is Outcome.OK
    quality = speed_quality(task, latency, served) if ok and speed_only else None
    record = RequestRecord(period=period, hotkey=neuron.hotkey, task=task, organic=organic,
                           outcome=outcome, units=served if ok else units, latency_s=latency,
                           quality=quality, at=at)
    return record, answer if ok else None


def _status_outcome(status: int) -> Outcome:
    if status == 429:
        return Outcome.RATE_LIMITED
    return Outcome.SERVER_ERROR if status >= 500 else Outcome.INVALID


async def _exchange(client: SignedClient, neuron: Neuron, message: Message):
    """(outcome, units served, the answer when valid)."""
    if isinstance(message, ChatRequest):
        return await _chat(client, neuron, message)
    path = task_path(message.task)
    reply = await client.post(neuron.endpoint, path, neuron.hotkey, message, timeout=3600)
    if reply.status != 200:
        return _status_outcome(reply.status), 0, None
    try:
        answer = ImageResponse.model_validate_json(reply.body)
        images = [base64.b64decode(i, validate=True) for i in answer.images]
    except (ValidationError, binascii.Error):
        return Outcome.INVALID, 0, None
    valid = (answer.units == message.units and len(images) == message.num_images
             and all(i.startswith(PNG_MAGIC) for i in images))
    return (Outcome.OK, answer.units, answer) if valid else (Outcome.INVALID, 0, None)


class MinerFailed(Exception):
    """A miner's answer that cannot be used; ``outcome`` says how it failed."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.value)
        self.outcome = outcome


async def chat_chunks(client: SignedClient, neuron: Neuron, message: ChatRequest):
    """The miner's chat stream, chunk by chunk, checked as it goes: raises MinerFailed for an
    error status, a malformed line, a final line that does not add up, or no final line."""
    path = task_path(message.task)
    tokens = 0
    async for status, line in client.stream(neuron.endpoint, path, neuron.hotkey, message, 3600):
        if status != 200:
            raise MinerFailed(_status_outcome(status))
        try:
            chunk = ChatChunk.model_validate_json(line)
        except ValidationError:
            raise MinerFailed(Outcome.INVALID) from None
        tokens += len(chunk.tokens)
        if tokens > message.max_tokens:
            raise MinerFailed(Outcome.INVALID)
        if chunk.done and not (chunk.completion_tokens == tokens and chunk.prompt_tokens > 0):
            raise MinerFailed(Outcome.INVALID)
        yield chunk
        if chunk.done:
            return
    raise MinerFailed(Outcome.INVALID)  # the stream ended without its final line


async def _chat(client: SignedClient, neuron: Neuron, message: ChatRequest):
    tokens: list[ChatToken] = []
    try:
        async for chunk in chat_chunks(client, neuron, message):
            tokens.extend(chunk.tokens)
            if chunk.done:
                return Outcome.OK, chunk.units, (tokens, chunk)
    except MinerFailed as e:
        return e.outcome, 0, None
