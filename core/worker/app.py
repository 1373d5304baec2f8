"""The worker's FastAPI app: one task on one back end, no chain and no wallet.

The front end (``neurons/miner.py``) reaches it with a bearer token. Chat is served through the
OpenAI-compatible ``/v1/chat/completions`` (streamed, with token ids and log-probabilities, as
``vllm serve`` answers it), so one client in the front end talks to either; images through the
miner's own request models on the miner's paths. ``/health`` needs no token.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from core.backends import ChatEngine, Engine
from core.errors import Refusal
from core.openai_wire import DONE, CompletionBody, chunk_event, finish_reason, usage_event
from core.protocol import (
    PATHS,
    REQUEST_MODELS,
    TRAJECTORY_PATH,
    ChatRequest,
    ImageRequest,
    TrajectoryRequest,
    max_request_bytes,
)
from core.tasks import TASKS, Kind
from core.transport.limits import BodyLimit, BodyTimeout

if TYPE_CHECKING:
    from core.backends.diffusers_images import DiffusersImages


def build_worker_app(task_id: str, engine: Engine, token: str, concurrency: int = 1,
                     body_timeout_s: float = 30.0) -> FastAPI:
    """``concurrency``: requests the engine runs at once; more wait their turn. A body must be
    within the task's largest valid request and arrive within ``body_timeout_s``."""
    task = TASKS[task_id]

    @asynccontextmanager
    async def lifespan(_):
        yield
        close = getattr(engine, "close", None)
        if close is not None:  # vLLM: stop its engine processes, which hold the GPU's memory
            close()

    app = FastAPI(title=f"SN19 worker: {task_id}", lifespan=lifespan)
    slots = asyncio.Semaphore(concurrency)
    load = {"busy": 0, "served": 0}

    @asynccontextmanager
    async def running():
        """A request's turn on the engine (``concurrency`` at once), counted for /health."""
        async with slots:
            load["busy"] += 1
            load["served"] += 1
            try:
                yield
            finally:
                load["busy"] -= 1

    def fail(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "code": status}}, status_code=status)

    app.add_middleware(BodyTimeout, seconds=body_timeout_s, reject=fail)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes(task.kind), reject=fail)

    def invalid(status: int, error: ValidationError) -> JSONResponse:
        first = error.errors()[0]
        return fail(status, f"{'.'.join(map(str, first['loc']))}: {first['msg']}")

    async def authorized(request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Refusal(401, "missing or wrong worker token")

    @app.exception_handler(Refusal)
    async def refused(_, e: Refusal):
        return fail(e.status, e.reason)

    def engine_down() -> JSONResponse | None:
        """A 503 while the engine is dead (a crashed vLLM engine core), so probes see it."""
        healthy = getattr(engine, "healthy", None)
        return fail(503, f"the {task_id} engine is down") if healthy and not healthy() else None

    @app.get("/health")
    async def health():
        return engine_down() or {"status": "ok", "task": task_id, **load,
                                 "concurrency": concurrency}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        if down := engine_down():
            return down
        return {"object": "list", "data": [{"id": task.model, "object": "model", "created": 0,
                                            "owned_by": "sn19-worker"}]}

    if task.kind is Kind.CHAT:
        chat = cast(ChatEngine, engine)  # a chat task's engine

        @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
        async def completions(body: CompletionBody):
            try:
                request = ChatRequest(task=task_id, messages=body.messages,
                                      max_tokens=body.max_tokens, temperature=body.temperature,
                                      top_p=body.top_p, seed=body.seed,
                                      min_tokens=body.min_tokens,
                                      stop=[body.stop] if isinstance(body.stop, str)
                                      else body.stop or [])
            except ValidationError as e:
                return invalid(400, e)
            ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            prompt = len(chat.prompt_ids(request))

            async def run():
                async with running():
                    async for batch in chat.stream(request):
                        yield batch

            if not body.stream:
                tokens = [t async for batch in run() for t in batch]
                text = "".join(t.text for t in tokens)
                choice = {"index": 0, "finish_reason": finish_reason(len(tokens), body.max_tokens),
                          "message": {"role": "assistant", "content": text}}
                return {"id": ident, "object": "chat.completion", "created": created,
                        "model": task.model, "choices": [choice],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                                  "total_tokens": prompt + len(tokens)}}

            async def events():
                produced = 0
                yield chunk_event(ident, created, task.model, {"role": "assistant", "content": ""})
                async for batch in run():
                    produced += len(batch)
                    yield chunk_event(ident, created, task.model,
                                      {"content": "".join(t.text for t in batch)},
                                      logprobs=batch if body.logprobs else None)
                yield chunk_event(ident, created, task.model, {},
                                  finish_reason(produced, body.max_tokens))
                if (body.stream_options or {}).get("include_usage"):
                    yield usage_event(ident, created, task.model, prompt, produced)
                yield DONE

            return StreamingResponse(events(), media_type="text/event-stream")
    else:
        images = cast("DiffusersImages", engine)  # an image task's engine

        @app.post(PATHS[task.kind], dependencies=[Depends(authorized)])
        async def generate(raw: Request):
            try:
                request = REQUEST_MODELS[task.kind].model_validate_json(await raw.body())
            except ValidationError as e:
                return invalid(422, e)
            if request.task != task_id or not isinstance(request, ImageRequest):
                return fail(404, f"this worker serves {task_id}, not {request.task}")
            async with running():
                try:
                    answer = await asyncio.to_thread(images.answer, request)
                except ValueError as e:
                    return fail(422, f"cannot use this request: {e}")
            return Response(answer.model_dump_json(), media_type="application/json")

        @app.post(TRAJECTORY_PATH, dependencies=[Depends(authorized)])
        async def trajectory(raw: Request):
            """The front end forwards a validator's opening of an answer this worker made."""
            try:
                request = TrajectoryRequest.model_validate_json(await raw.body())
            except ValidationError as e:
                return invalid(422, e)
            opened = await images.opening(request)
            if opened is None:
                return fail(404, "no such answer is kept")
            return Response(opened.model_dump_json(), media_type="application/json")

    return app
