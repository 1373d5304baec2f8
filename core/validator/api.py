"""The validator's OpenAI-compatible API for its users (organic traffic).

POST /v1/chat/completions (streamed as server-sent events, or whole), POST /v1/images/generations
(text-to-image), POST /v1/images/image-to-image and /v1/images/inpaint (JSON with base64 images),
GET /v1/models (the tasks with this period's capacity). Every call needs an API key
(``Authorization: Bearer sn19-...``) within its rate limit; errors are OpenAI-style JSON.

Requests are admitted one by one once their bodies are in (``core.transport.slots``): up to
``SlotLimits.concurrency`` served at once, a bounded queue, then 503 with ``Retry-After``; one
address may have BODIES_PER_ADDRESS bodies arriving at once (429 beyond). A store that fails or
does not answer within ``organic.STORE_TIMEOUT_S`` is a 503 with ``Retry-After``. Every text
the API echoes is bounded (``shown``), and ordinary client behaviour (leaving mid-stream,
malformed JSON, a body too large) is answered or logged in one line, never with a traceback.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Refusal
from core.openai_wire import (
    DONE,
    ChatCompletionRequest,
    ImagesRequest,
    ImageToImageBody,
    InpaintBody,
    StopFilter,
    chunk_event,
    event,
    finish_reason,
    usage_event,
)
from core.protocol import (
    ChatRequest,
    ImageToImageRequest,
    InpaintRequest,
    TextToImageRequest,
)
from core.storage.store import Store
from core.tasks import TASKS, Kind
from core.transport.limits import BodyLimit, BodyTimeout, shown
from core.transport.slots import RequestSlots, SlotLimits
from core.validator import keys
from core.validator.book import PeriodBook
from core.validator.organic import AllFailed, NoCapacity, Organic, StoreAway, from_store
from core.validator.settings import API_CONCURRENCY
from core.validator.traffic import Traffic

DEFAULT_MAX_BODY = 16 * 2**20
# a stream holds its slot to its end; a queued request waits 2 s at most
DEFAULT_SLOTS = SlotLimits(concurrency=API_CONCURRENCY, queue=API_CONCURRENCY, wait_s=2.0)
BODIES_PER_ADDRESS = 64  # arriving at once from one address, before any key is checked
STORE_RETRY_AFTER_S = 5
log = logging.getLogger("validator.api")


class ApiError(Refusal):
    """A refusal as the OpenAI API words it: ``kind`` is its error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(status, message, headers)
        self.message, self.kind = message, kind


def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}},
                        status_code=status, headers=headers)


def task_for(model: str, kind: Kind) -> str:
    """A task id, or a production model id, naming a task of ``kind``."""
    for task in TASKS.values():
        if task.kind is kind and model in (task.id, task.model):
            return task.id
    choices = ", ".join(t.id for t in TASKS.values() if t.kind is kind)
    raise ApiError(404, f"model {shown(model)!r} is not served here for {kind.value}; use one "
                        f"of: {choices}", "not_found_error")


@dataclass(frozen=True)
class ApiServices:
    """What the API uses of a validator, and nothing more: the period's book (budgets and live
    capacity), traffic (one way to send, classify and record a request), the store (keys and rate
    limits), and whether this process runs the period loop (for /health)."""

    book: PeriodBook
    traffic: Traffic
    store: Store
    leading: Callable[[], bool]


def build_api(services: ApiServices, *, max_body: int = DEFAULT_MAX_BODY, max_attempts: int = 3,
              body_timeout_s: float = 30.0, slots: SlotLimits = DEFAULT_SLOTS) -> FastAPI:
    app = FastAPI(title="SN19 validator API", version="1",
                  description="OpenAI-compatible access to Subnet 19's miners")
    organic = Organic(services.book, services.traffic, max_attempts)
    limiter = keys.RateLimiter(services.store)
    seeds = random.Random()

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return error(e.status, e.message, e.kind, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):  # 404, 405: the same error shape
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(e.status_code, str(e.detail), kind, getattr(e, "headers", None))

    @app.exception_handler(StoreAway)
    async def store_away(_, e: StoreAway):
        log.warning("request refused: %s", e)
        return error(503, "the validator's database is unavailable; retry shortly", "api_error",
                     {"Retry-After": str(STORE_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def failed(_, e: Exception):  # a bug: still OpenAI's error shape
        log.error("request failed: %s: %s", type(e).__name__, shown(e))
        return error(500, f"internal error ({type(e).__name__})", "api_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = shown(".".join(str(x) for x in first["loc"] if x != "body"))
        msg = shown(first["msg"])
        return error(400, f"{where}: {msg}" if where else msg, "invalid_request_error")

    def reject(status: int, message: str) -> JSONResponse:
        return error(status, message, "invalid_request_error")

    app.add_middleware(RequestSlots, limits=slots, reject=reject)
    app.add_middleware(BodyTimeout, seconds=body_timeout_s, reject=reject,
                       per_address=BODIES_PER_ADDRESS)  # before a slot: withheld bodies hold none
    app.add_middleware(BodyLimit, max_bytes=max_body, reject=reject)  # outermost: size first

    def check(token: str) -> tuple[keys.ApiKey | None, float]:
        """The key and the wait its rate limit asks, in one call of the store (one trip to a
        thread on PostgreSQL)."""
        key = keys.find(services.store, token)
        return key, (limiter.allow(key) if key is not None else 0.0)

    async def authorize(request: Request) -> keys.ApiKey:
        # async: a sync dependency would cost every request a hop to FastAPI's thread pool
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                           "authentication_error")
        key, wait = await from_store(services.store.io(check, token))
        if key is None:
            raise ApiError(401, "invalid or revoked API key", "authentication_error")
        if wait:
            raise ApiError(429, f"rate limit of {key.per_minute} requests a minute reached",
                           "rate_limit_error", {"Retry-After": str(max(1, round(wait)))})
        return key

    def message(model_cls, **fields):
        try:
            return model_cls(**fields)
        except ValidationError as e:
            first = e.errors()[0]
            raise ApiError(400, f"{shown('.'.join(map(str, first['loc'])))}: "
                                f"{shown(first['msg'])}") from None

    @app.get("/health")
    async def health():
        """For load balancers (no key): this replica's period and whether it runs the loop."""
        return {"status": "ok", "period": services.book.period,
                "period_loop": services.leading()}

    @app.get("/v1/models")
    async def models(_: keys.ApiKey = Depends(authorize)):
        live = await from_store(services.store.io(services.book.capacity))
        return {"object": "list", "data": [
            {"id": t.id, "object": "model", "created": 0, "owned_by": "sn19", "kind": t.kind.value,
             "unit": t.unit.value, "upstream": t.model,
             "budget": live.get(t.id, {}).get("budget", 0.0),
             "remaining": live.get(t.id, {}).get("remaining", 0.0)}
            for t in TASKS.values()]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, _: keys.ApiKey = Depends(authorize)):
        if body.n != 1:
            raise ApiError(400, "n: only 1 choice per request is supported")
        if field := body.unsupported():
            raise ApiError(400, f"{shown(field)}: not supported by this API")
        task = task_for(body.model, Kind.CHAT)
        request = message(ChatRequest, task=task,
                          messages=[{"role": m.role, "content": m.text()} for m in body.messages],
                          max_tokens=next((m for m in (body.max_completion_tokens,
                                                       body.max_tokens) if m is not None), 256),
                          temperature=body.temperature, top_p=body.top_p, stop=body.stops(),
                          seed=body.seed if body.seed is not None else seeds.getrandbits(62))
        stream = organic.chat(request)
        try:
            first = await anext(stream)
        except (NoCapacity, AllFailed) as e:
            raise ApiError(503 if isinstance(e, NoCapacity) else 502, str(e), "api_error") from None
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(first, stream, ident, created, task, request, usage),
                                     media_type="text/event-stream")
        chunks = [first]
        try:
            async for chunk in stream:
                chunks.append(chunk)
        except (NoCapacity, AllFailed) as e:
            raise ApiError(502, str(e), "api_error") from None
        final = chunks[-1]
        text = StopFilter(request.stop)
        content = "".join(text.feed(t.text) for c in chunks for t in c.tokens) + text.flush()
        return {"id": ident, "object": "chat.completion", "created": created, "model": task,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish_reason(final.completion_tokens,
                                                            request.max_tokens, text.stopped)}],
                "usage": _usage(final)}

    async def image(request, task: str):
        try:
            answer = await organic.image(request)
        except NoCapacity as e:
            raise ApiError(503, str(e), "api_error") from None
        except AllFailed as e:
            raise ApiError(502, str(e), "api_error") from None
        return {"created": int(time.time()), "model": task,
                "data": [{"b64_json": b64} for b64 in answer.images]}

    def image_fields(body: ImagesRequest, task: str) -> dict:
        try:
            width, height = (int(x) for x in body.size.lower().split("x"))
        except ValueError:
            raise ApiError(400, f"size: expected WIDTHxHEIGHT, got {shown(body.size)!r}") from None
        return dict(task=task, prompt=body.prompt, negative_prompt=body.negative_prompt,
                    steps=TASKS[task].units_per_synthetic if body.steps is None else body.steps,
                    width=width, height=height,
                    seed=body.seed if body.seed is not None else seeds.getrandbits(62),
                    guidance_scale=body.guidance_scale, num_images=body.n)

    @app.post("/v1/images/generations")
    async def generations(body: ImagesRequest, _: keys.ApiKey = Depends(authorize)):
        task = task_for(body.model, Kind.TEXT_TO_IMAGE)
        return await image(message(TextToImageRequest, **image_fields(body, task)), task)

    @app.post("/v1/images/image-to-image")
    async def image_to_image(body: ImageToImageBody, _: keys.ApiKey = Depends(authorize)):
        task = task_for(body.model, Kind.IMAGE_TO_IMAGE)
        return await image(message(ImageToImageRequest, **image_fields(body, task),
                                   init_image=body.image, strength=body.strength), task)

    @app.post("/v1/images/inpaint")
    async def inpaint(body: InpaintBody, _: keys.ApiKey = Depends(authorize)):
        task = task_for(body.model, Kind.INPAINT)
        return await image(message(InpaintRequest, **image_fields(body, task),
                                   init_image=body.image, mask_image=body.mask,
                                   strength=body.strength), task)

    return app


def _usage(final) -> dict:
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.units}


async def _sse(first, stream, ident: str, created: int, task: str, request: ChatRequest,
               usage: bool):
    """OpenAI's chat.completion.chunk events; a failure no miner could finish ends the stream with
    an error event (the client's library raises it). The events of one miner chunk go to the
    client in one write (the role with the first tokens, the end with [DONE]): each write costs
    the validator as much CPU as the events in it."""
    out = chunk_event(ident, created, task, {"role": "assistant", "content": ""})
    chunk = first
    text = StopFilter(request.stop)
    try:
        while True:
            content = "".join(text.feed(t.text) for t in chunk.tokens)
            if chunk.done:
                content += text.flush()
            if content:
                out += chunk_event(ident, created, task, {"content": content})
            if chunk.done:
                out += chunk_event(ident, created, task, {},
                                   finish_reason(chunk.completion_tokens, request.max_tokens,
                                                 text.stopped))
                if usage:
                    out += usage_event(ident, created, task, chunk.prompt_tokens,
                                       chunk.completion_tokens)
                break
            if out:
                yield out
                out = b""
            chunk = await anext(stream)
    except Exception as e:  # whatever broke it, the client gets an error event and [DONE]
        out += event({"error": {"message": f"the stream could not be finished: {_reason(e)}",
                                "type": "api_error"}})
    finally:
        await stream.aclose()  # every attempt recorded, the miner's stream closed
    yield out + DONE


def _reason(e: Exception) -> str:
    """What a client may read of a failure: ours, or only its kind (never a miner's text)."""
    return str(e) if isinstance(e, (NoCapacity, AllFailed, StoreAway)) else type(e).__name__
