"""The miner's FastAPI app: the capacity synapse and one endpoint per task kind.

Every request is verified (btauth/1 signature addressed to this miner: 401; a registered validator
with a permit and the minimum stake: 403), checked for the protocol's major version (400), held to
the caller's stake share of the declaration (429 with Retry-After), then served by the task's
task's pool of workers within its concurrency limit. The capacity synapse advertises what the
healthy workers bring, checked every ``health_interval_s``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.budget import stake_share
from core.capacity import clamp_declaration
from core.chain import Chain, Metagraph
from core.miner.config import MinerConfig
from core.miner.limits import Ledger, Slots
from core.miner.metrics import MinerMetrics
from core.miner.pool import NoWorker, Pool
from core.protocol import (
    CAPACITY_PATH,
    MAX_IMAGE_B64_CHARS,
    MAX_TOKENS_PER_LINE,
    PATHS,
    PROTOCOL_VERSION,
    REQUEST_MODELS,
    CapacityResponse,
    ChatChunk,
    ErrorResponse,
    ImageResponse,
    max_request_bytes,
)
from core.tasks import TASKS, Kind
from core.transport.admission import admit_signed
from core.transport.auth import Gate, Refused
from core.transport.limits import BodyLimit

log = logging.getLogger("miner")


def wire_lines(chunk: ChatChunk) -> list[bytes]:
    """A chunk as NDJSON lines of at most MAX_TOKENS_PER_LINE tokens, so every line stays within
    the size validators read (MAX_CHAT_LINE_BYTES)."""
    step = MAX_TOKENS_PER_LINE
    parts = [chunk] if len(chunk.tokens) <= step else [
        ChatChunk(tokens=chunk.tokens[i:i + step]) for i in range(0, len(chunk.tokens), step)]
    return [part.model_dump_json().encode() + b"\n" for part in parts]


DEFAULT_MAX_BODY = 2 * MAX_IMAGE_B64_CHARS + 2**20  # an inpaint request's two images and change
CAPACITY_MAX_BODY = 4096  # a capacity request is its version


@dataclass
class MinerState:
    """What the endpoints share: the declaration, the workers, limits and the cached metagraph."""

    hotkey: str
    config: MinerConfig
    pools: dict[str, Pool]
    chain: Chain
    gate: Gate
    period_blocks: int
    slots: Slots
    ledger: Ledger = field(default_factory=Ledger)
    metagraph: Metagraph | None = None
    synced_at: float = 0.0
    head: int = 0
    block_time: float = 12.0

    def declaration(self) -> dict[str, float]:
        """What the healthy workers bring, clamped as validators will."""
        return clamp_declaration({task: pool.declared() for task, pool in self.pools.items()})

    async def sync(self) -> None:
        """The chain's head, and the metagraph at the current period's start block: validators
        budget from the same stakes and permits (docs/protocol.md §3.1)."""
        head = await self.chain.block()
        self.metagraph = await self.chain.metagraph(head - head % self.period_blocks)
        self.block_time = await self.chain.block_time()
        self.head, self.synced_at = head, time.monotonic()

    def block(self) -> float:
        elapsed = time.monotonic() - self.synced_at
        return self.head + elapsed / self.block_time

    def period(self) -> tuple[int, float]:
        """The current period and the seconds left in it."""
        block = self.block()
        period = int(block // self.period_blocks)
        return period, ((period + 1) * self.period_blocks - block) * self.block_time


def refuse(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=reason).model_dump(), status_code=status,
                        headers=headers)


def build_app(state: MinerState, *, sync_interval_s: float = 12.0, announce=None,
              max_body: int = DEFAULT_MAX_BODY, health_interval_s: float = 5.0,
              body_timeout_s: float = 30.0, public_metrics: bool = False) -> FastAPI:
    """``announce``: (wallet, host, port) to serve on chain at start-up, or None."""
    metrics = MinerMetrics(state.pools)

    def changed(pool: Pool) -> None:
        state.slots.resize(pool.task, pool.concurrency())
        metrics.workers(pool)

    for pool in state.pools.values():
        pool.on_change = changed

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if announce is not None:
            await state.chain.serve(*announce)
        await state.sync()

        async def keep_synced():
            while True:
                await asyncio.sleep(sync_interval_s)
                try:
                    await state.sync()
                except Exception as e:  # the chain may be briefly unreachable: keep serving
                    log.warning("metagraph sync failed: %s", e)

        await asyncio.gather(*(pool.check() for pool in state.pools.values()))  # declare truly

        async def keep_checked():
            while True:
                await asyncio.sleep(health_interval_s)
                try:
                    await asyncio.gather(*(pool.check() for pool in state.pools.values()))
                except Exception:  # a probe that breaks must not end the checks for good
                    log.exception("worker health check failed")

        tasks = [asyncio.create_task(keep_synced()), asyncio.create_task(keep_checked())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(pool.close() for pool in state.pools.values()))

    # no /docs or /openapi.json: the public port shows validators nothing but the synapses
    app = FastAPI(title="SN19 miner", version=PROTOCOL_VERSION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body, reject=refuse,
                       per_path={CAPACITY_PATH: CAPACITY_MAX_BODY,
                                 **{PATHS[k]: min(max_body, max_request_bytes(k)) for k in PATHS}})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):  # 404, 405: the same error shape
        return refuse(e.status_code, str(e.detail), getattr(e, "headers", None))

    async def admit(request: Request, kind: Kind | None):
        """Authenticate, authorise and parse: (validator neuron, message) or a refusal Response."""
        try:
            validator, raw = await admit_signed(request, state.gate, state.metagraph,
                                                body_timeout_s, "this miner")
        except Refused as e:
            return refuse(e.status, e.reason)
        if kind is None:
            return validator, None
        try:
            message = REQUEST_MODELS[kind].model_validate(raw)
        except ValidationError as e:
            detail = json.loads(e.json(include_url=False, include_input=False,
                                       include_context=False))
            return JSONResponse({"version": PROTOCOL_VERSION, "error": "invalid request",
                                 "detail": detail}, 422)
        task = TASKS.get(message.task)
        if task is None or task.kind is not kind or message.task not in state.pools:
            return refuse(404, f"task {message.task!r} is not served at {PATHS[kind]}")
        return validator, message

    async def start(validator, task: str, units: float):
        """Reserve units against the caller's share, then wait for a slot in the task's group
        (in arrival order): the period, or a 429 Response (503 while no worker of it is up)."""
        period, left_s = state.period()
        if state.pools[task].concurrency() == 0:
            metrics.refuse(task, validator.hotkey, "no worker")
            return refuse(503, f"no {task} worker is up", {"Retry-After": "5"})
        assert state.metagraph is not None  # admission refused every call before the first sync
        allowance = state.declaration().get(task, 0.0) * stake_share(state.metagraph,
                                                                    validator.hotkey)
        if not state.ledger.reserve(validator.hotkey, task, units, allowance, period):
            metrics.refuse(task, validator.hotkey, "share")
            return refuse(429, f"this validator's share of {task} is used up for this period",
                          {"Retry-After": str(max(1, round(left_s)))})
        if not await state.slots.acquire(task):
            state.ledger.release(validator.hotkey, task, units, period)
            metrics.refuse(task, validator.hotkey, "busy")
            return refuse(429, f"{task} is at its concurrency limit", {"Retry-After": "1"})
        return period

    @app.get("/health")
    async def health():
        return {"status": "ok", "hotkey": state.hotkey, "version": PROTOCOL_VERSION}

    @app.get("/metrics")
    async def prometheus(request: Request):
        """Prometheus, for this host only unless ``public_metrics``: it names validators' hotkeys
        and the workers' internal addresses."""
        if not public_metrics and (request.client is None
                                   or request.client.host not in ("127.0.0.1", "::1")):
            return refuse(404, "Not Found")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(CAPACITY_PATH, response_model=CapacityResponse)
    async def capacity(request: Request):
        admitted = await admit(request, None)
        if isinstance(admitted, Response):
            return admitted
        return CapacityResponse(hotkey=state.hotkey, capacities=state.declaration())

    @app.post(PATHS[Kind.CHAT])
    async def chat(request: Request):
        admitted = await admit(request, Kind.CHAT)
        if isinstance(admitted, Response):
            return admitted
        validator, message = admitted
        reserved = message.units_allowance()
        period = await start(validator, message.task, reserved)
        if isinstance(period, Response):
            return period
        began = time.perf_counter()
        stream = state.pools[message.task].chat(message)
        served = {"units": 0, "status": 500}

        def finish() -> None:
            state.slots.release(message.task)
            state.ledger.release(validator.hotkey, message.task, reserved - served["units"], period)
            metrics.served(message.task, validator.hotkey, served["status"], served["units"],
                           time.perf_counter() - began)

        try:
            first = await anext(stream)
        except Exception as e:  # nothing sent yet: a clean error answer
            served["status"] = 503 if isinstance(e, NoWorker) else 500
            finish()
            if isinstance(e, NoWorker):
                return refuse(503, str(e), {"Retry-After": "5"})
            log.exception("%s failed", message.task)
            return refuse(500, f"{message.task} failed: {type(e).__name__}")

        async def lines() -> AsyncIterator[bytes]:
            chunk = first
            try:
                served["status"] = 499  # until the stream ends: a caller that leaves is not a 500
                while True:
                    if chunk.done:
                        served["units"], served["status"] = chunk.units, 200
                    else:
                        served["units"] += len(chunk.tokens)
                    for line in wire_lines(chunk):
                        yield line
                    if chunk.done:
                        return
                    try:
                        chunk = await anext(stream)
                    except Exception:
                        served["status"] = 500  # the engine failed mid-stream
                        raise
            finally:
                await stream.aclose()
                finish()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def image(request: Request, kind: Kind):
        admitted = await admit(request, kind)
        if isinstance(admitted, Response):
            return admitted
        validator, message = admitted
        period = await start(validator, message.task, message.units)
        if isinstance(period, Response):
            return period
        began = time.perf_counter()
        try:
            images = await state.pools[message.task].images(message)
        except Exception as e:
            state.ledger.release(validator.hotkey, message.task, message.units, period)
            status = 422 if isinstance(e, ValueError) else 503 if isinstance(e, NoWorker) else 500
            metrics.served(message.task, validator.hotkey, status, 0, time.perf_counter() - began)
            if status == 422:  # e.g. an init image that does not decode
                return refuse(422, f"cannot use this request: {e}")
            if status == 503:
                return refuse(503, str(e), {"Retry-After": "5"})
            log.exception("%s failed", message.task)
            return refuse(500, f"{message.task} failed: {type(e).__name__}")
        finally:
            state.slots.release(message.task)
        seconds = time.perf_counter() - began
        metrics.served(message.task, validator.hotkey, 200, message.units, seconds)
        answer = ImageResponse(images=[base64.b64encode(i).decode() for i in images],
                               units=message.units)
        # already a validated model: send its JSON as is, past FastAPI's re-validation;
        # Server-Timing tells the caller how much of its wait the engine took
        return Response(answer.model_dump_json(), media_type="application/json",
                        headers={"Server-Timing": f"engine;dur={seconds * 1e3:.3f}"})

    def image_endpoint(kind: Kind):
        async def endpoint(request: Request):
            return await image(request, kind)

        return endpoint

    for kind in (Kind.TEXT_TO_IMAGE, Kind.IMAGE_TO_IMAGE, Kind.INPAINT):
        app.post(PATHS[kind], response_model=ImageResponse)(image_endpoint(kind))

    return app

