"""The miner's FastAPI app: routes for the capacity synapse and one endpoint per task kind, and
the background loops that keep the chain's view and the workers' health fresh.

Every request is admitted (btauth/1 signature addressed to this miner: 401; a registered
validator with a permit and the minimum stake: 403; the protocol's major version: 400; the
request's shape: 422), held to the caller's stake share of the declaration (429 with
Retry-After), then served by the task's pool of workers within its concurrency limit
(``core/miner/serving.py``). The capacity synapse answers the period's declaration, signed
once for the period from what the healthy workers brought then (``core/miner/latch.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.chain import ChainError
from core.chain.announce import keep_announced
from core.errors import Refusal
from core.miner.latch import WrongPeriod
from core.miner.metrics import MinerMetrics
from core.miner.pool import NoWorker, Pool
from core.miner.serving import Serving, refusal_response
from core.miner.settings import MinerSettings
from core.miner.state import MinerState
from core.protocol import (
    CAPACITY_PATH,
    MAX_TOKENS_PER_LINE,
    PATHS,
    PROTOCOL_VERSION,
    TRAJECTORY_PATH,
    CapacityRequest,
    CapacityResponse,
    ChatRequest,
    ChatTokens,
    ImageRequest,
    TrajectoryRequest,
    max_request_bytes,
)
from core.tasks import TASKS, Kind
from core.transport.limits import BodyLimit

__all__ = ["MinerSettings", "MinerState", "build_app"]

log = logging.getLogger("miner")

LINE_INTERVAL_S = 0.2  # a chat stream's lines at most this often (the first and last at once):
#   an engine hands over tokens one at a time, and a line costs the validator ~40 µs to receive
#   and read, a token in it ~0.2 µs (scripts/bench_window.py with its --tick, bench_wire.py)
CAPACITY_MAX_BODY = 4096  # a capacity request is its version
TRAJECTORY_MAX_BODY = 4096  # a task, a key and at most MAX_OPENED step numbers


def wire_lines(tokens: ChatTokens) -> list[bytes]:
    """Tokens as NDJSON lines of at most MAX_TOKENS_PER_LINE tokens, so every line stays within
    the size validators read (MAX_CHAT_LINE_BYTES)."""
    step = MAX_TOKENS_PER_LINE
    return [tokens.span(i, i + step).model_dump_json().encode() + b"\n"
            for i in range(0, len(tokens), step)]


def lifespan_of(state: MinerState, settings: MinerSettings, announce):
    """Start-up (announce, first sync, first health check: the declaration is true from the
    first request), the two loops while serving, and the workers closed at the end."""

    async def every(seconds: float, step, what: str):
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception as e:  # the chain or a probe briefly failing: keep serving
                log.warning("%s failed: %s: %s", what, type(e).__name__, e)

    async def first_sync():
        """The metagraph before anything is served (callers are screened by it), through a
        chain outage: retried with backoff, a line each time."""
        for attempt in itertools.count():
            try:
                return await state.sync()
            except ChainError as e:
                delay = min(2 ** attempt, 60)
                log.warning("reading the metagraph failed (%s); retrying in %ds", e, delay)
                await asyncio.sleep(delay)

    async def check_all():
        await asyncio.gather(*(pool.check() for pool in state.pools.values()))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await first_sync()
        await check_all()
        loops = [asyncio.create_task(every(settings.sync_interval_s, state.sync,
                                           "metagraph sync")),
                 asyncio.create_task(every(settings.health_interval_s, check_all,
                                           "worker health check"))]
        if announce is not None:  # in the background: a refusal never stops the miner
            loops.append(asyncio.create_task(keep_announced(state.chain, *announce)))
        yield
        for loop in loops:
            loop.cancel()
        await state.chain.close()
        await asyncio.gather(*(pool.close() for pool in state.pools.values()))

    return lifespan


def build_app(state: MinerState, settings: MinerSettings = MinerSettings(),
              announce=None) -> FastAPI:
    """``announce``: (wallet, host, port) to serve on chain at start-up, or None."""
    metrics = MinerMetrics(state.pools)
    serving = Serving(state, metrics, settings.body_timeout_s)

    def changed(pool: Pool) -> None:
        state.slots.resize(pool.task, pool.concurrency())
        metrics.workers(pool)

    for pool in state.pools.values():
        pool.on_change = changed

    # no /docs or /openapi.json: the public port shows validators nothing but the synapses
    app = FastAPI(title="SN19 miner", version=PROTOCOL_VERSION,
                  lifespan=lifespan_of(state, settings, announce),
                  docs_url=None, redoc_url=None, openapi_url=None)

    def refuse(status: int, reason: str, headers: dict | None = None) -> Response:
        return refusal_response(Refusal(status, reason, headers))

    app.add_middleware(BodyLimit, max_bytes=settings.max_body, reject=refuse,
                       per_path={CAPACITY_PATH: CAPACITY_MAX_BODY,
                                 TRAJECTORY_PATH: TRAJECTORY_MAX_BODY,
                                 **{PATHS[k]: min(settings.max_body, max_request_bytes(k))
                                    for k in PATHS}})

    @app.exception_handler(Refusal)
    async def refused(_, e: Refusal):
        return refusal_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):  # 404, 405: the same error shape
        return refuse(e.status_code, str(e.detail), getattr(e, "headers", None))

    def failed(task: str, e: Exception, unusable_input: bool = False) -> Refusal:
        """A request that could not be served, before anything was sent; with
        ``unusable_input``, an engine's ValueError is the request's fault (e.g. an init image
        that does not decode)."""
        if isinstance(e, NoWorker):
            return Refusal(503, str(e), {"Retry-After": "5"})
        if unusable_input and isinstance(e, ValueError):
            return Refusal(422, f"cannot use this request: {e}")
        log.exception("%s failed", task)
        return Refusal(500, f"{task} failed: {type(e).__name__}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "hotkey": state.hotkey, "version": PROTOCOL_VERSION}

    @app.get("/metrics")
    async def prometheus(request: Request):
        """Prometheus, for this host only unless ``public_metrics``: it names validators' hotkeys
        and the workers' internal addresses."""
        if not settings.public_metrics and (request.client is None
                                            or request.client.host not in ("127.0.0.1", "::1")):
            raise Refusal(404, "Not Found")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The synapses are plain Starlette routes: admission reads and checks the request itself
    # (signature first, then the message), so FastAPI's parameter and response machinery would
    # only cost each request time (scripts/bench_miner.py)
    def synapse(path: str):
        def register(endpoint):
            app.router.add_route(path, endpoint, methods=["POST"])
            return endpoint

        return register

    @synapse(CAPACITY_PATH)
    async def capacity(request: Request):
        """The declaration of the period asked, signed once for the whole period: the same to
        every validator (``MinerState.signed_declaration``)."""
        await serving.admit(request, None)
        try:  # admission read the body and checked its signature and version
            asked = CapacityRequest.model_validate_json(await request.body() or b"{}")
        except ValidationError:
            raise Refusal(422, "invalid capacity request") from None
        try:
            declaration = state.signed_declaration(asked.period)
        except WrongPeriod as e:
            raise Refusal(409, str(e)) from None
        except OSError as e:  # never answered unless recorded: a restart must find it
            log.error("cannot record the declaration of period %s in %s: %s", asked.period,
                      state.latch.path, e)
            raise Refusal(503, "cannot record this period's declaration",
                          {"Retry-After": "5"}) from None
        answer = CapacityResponse(**declaration.model_dump())
        return Response(answer.model_dump_json(), media_type="application/json")

    @synapse(PATHS[Kind.CHAT])
    async def chat(request: Request):
        validator, message = await serving.admit(request, Kind.CHAT)
        assert isinstance(message, ChatRequest)
        turn = await serving.start(validator, message.task, message.units_allowance())
        stream = state.pools[message.task].chat(message)
        try:
            first = await anext(stream)
        except Exception as e:  # nothing sent yet: a clean error answer
            refusal = failed(message.task, e)
            turn.finish(refusal.status, 0)
            raise refusal from None

        async def lines() -> AsyncIterator[bytes]:
            chunk, units, status = first, 0, 499  # a caller that leaves is not a 500
            held = ChatTokens()  # tokens waiting for the next line
            sent_at = -LINE_INTERVAL_S
            try:
                while True:
                    if chunk.done:
                        units, status = chunk.units, 200
                    else:
                        units += len(chunk.ids)
                        held.add(chunk)
                    now = time.monotonic()
                    if held and (chunk.done or now - sent_at >= LINE_INTERVAL_S):
                        for line in wire_lines(held):
                            yield line
                        held, sent_at = ChatTokens(), now
                    if chunk.done:
                        yield chunk.model_dump_json().encode() + b"\n"
                        return
                    try:
                        chunk = await anext(stream)
                    except Exception:
                        status = 500  # the engine failed mid-stream
                        raise
            finally:
                await stream.aclose()
                turn.finish(status, units)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def image(request: Request, kind: Kind):
        validator, message = await serving.admit(request, kind)
        assert isinstance(message, ImageRequest)
        turn = await serving.start(validator, message.task, message.units)
        try:
            answer = await state.pools[message.task].images(message)
        except Exception as e:
            refusal = failed(message.task, e, unusable_input=True)
            turn.finish(refusal.status, 0)
            raise refusal from None
        seconds = turn.finish(200, message.units)
        # Server-Timing tells the caller how much of its wait the engine took
        return Response(answer.model_dump_json(), media_type="application/json",
                        headers={"Server-Timing": f"engine;dur={seconds * 1e3:.3f}"})

    def image_endpoint(kind: Kind):
        async def endpoint(request: Request):
            return await image(request, kind)

        return endpoint

    for kind in (Kind.TEXT_TO_IMAGE, Kind.IMAGE_TO_IMAGE, Kind.INPAINT):
        synapse(PATHS[kind])(image_endpoint(kind))

    @synapse(TRAJECTORY_PATH)
    async def trajectory(request: Request):
        """A validator opens an image answer it received by reference (docs/protocol.md §8): the
        PNGs and the asked steps' latents. Admitted as every signed call, held to no share (the
        answer was charged), 404 when the answer is not kept (expired, or never made here)."""
        await serving.admit(request, None)
        try:  # admission read the body and checked its signature and version
            asked = TrajectoryRequest.model_validate_json(await request.body())
        except ValidationError:
            raise Refusal(422, "invalid trajectory request") from None
        pool = state.pools.get(asked.task)
        if pool is None or TASKS[asked.task].kind is Kind.CHAT:
            raise Refusal(404, f"task {asked.task!r} is not an image task served here")
        opened = await pool.trajectory(asked)
        if opened is None:
            raise Refusal(404, "no such answer is kept")
        return Response(opened.model_dump_json(), media_type="application/json")

    return app
