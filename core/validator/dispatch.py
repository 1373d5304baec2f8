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
    quality = speed_factor(latency, TASKS[task].expected_seconds(served)) if ok and speed_only \
        else None
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
    path = task_path(message.task)
    if isinstance(message, ChatRequest):
        return await _chat(client, neuron, path, message)
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


async def _chat(client: SignedClient, neuron: Neuron, path: str, message: ChatRequest):
    tokens: list[ChatToken] = []
    async for status, line in client.stream(neuron.endpoint, path, neuron.hotkey, message, 3600):
        if status != 200:
            return _status_outcome(status), 0, None
        try:
            chunk = ChatChunk.model_validate_json(line)
        except ValidationError:
            return Outcome.INVALID, 0, None
        tokens.extend(chunk.tokens)
        if chunk.done:
            valid = (chunk.completion_tokens == len(tokens) <= message.max_tokens
                     and chunk.prompt_tokens > 0)
            return (Outcome.OK, chunk.units, (tokens, chunk)) if valid else (Outcome.INVALID, 0, None)
    return Outcome.INVALID, 0, None  # the stream ended without its final line
