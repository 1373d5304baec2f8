"""The validator's peer endpoint, announced on chain (docs/protocol.md §9): the window reports it
serves to the other permitted validators, its health, and its Prometheus metrics.

Only a permitted validator's signed request is answered (the miner's admission: 401, 403); the
answer is this validator's own report of the window asked, signed for the caller
(``core.validator.sharing``), or 404 while it has none.

``POST /feedback`` answers any registered hotkey, signed with btauth/1 for this validator, what
this validator measured of that hotkey's own contenders (``core.validator.feedback``), at most
once every FEEDBACK_INTERVAL_S per hotkey (429 sooner).

Requests are admitted one by one once their bodies are in (``core.transport.slots``,
PEER_SLOTS). Until its signature is checked a caller is unproven (a hotkey is public: claiming
one proves nothing), so its body, a few bytes, must arrive within PEER_BODY_TIMEOUT_S, and one
address may have at most BODIES_PER_ADDRESS bodies arriving at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Refusal
from core.feedback import FEEDBACK_INTERVAL_S, FEEDBACK_PATH, FeedbackRequest
from core.metagraph import Metagraph
from core.protocol import PROTOCOL_VERSION
from core.storage import AsyncStore
from core.transport.admission import admit_signed
from core.transport.auth import Gate
from core.transport.limits import BodyLimit, BodyTimeout
from core.transport.slots import RequestSlots, SlotLimits
from core.validator.metrics import ValidatorMetrics
from core.window_report import REPORT_PATH, ReportRequest

MAX_BODY = 4096  # a report request is a block number
PEER_BODY_TIMEOUT_S = 3.0  # for those 4 KiB at most, sent with the headers
# permitted validators ask for a window's report at about the same time; miners ask for feedback
PEER_SLOTS = SlotLimits(concurrency=64, queue=512, wait_s=5.0)
BODIES_PER_ADDRESS = 8


def refuse(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"version": PROTOCOL_VERSION, "error": reason}, status_code=status)


class ReportAnswers(Protocol):
    async def answer(self, block: int, caller: str) -> tuple[bytes, dict[str, str]] | None:
        """This validator's report of the window at ``block``, signed for ``caller``."""


@dataclass(frozen=True)
class PeerServices:
    """What the peer endpoint uses of a validator, and nothing more
    (``core.validator.loop.Validator.peer_services``)."""

    hotkey: str
    metagraph: Callable[[], Metagraph | None]  # the current period's: who may ask (None: unsynced)
    metrics: ValidatorMetrics
    reports: ReportAnswers | None  # None: this validator shares no reports
    store: AsyncStore  # what feedback reads


def build_peer_app(services: PeerServices, *, body_timeout_s: float = PEER_BODY_TIMEOUT_S,
                   public_metrics: bool = False, slots: SlotLimits = PEER_SLOTS) -> FastAPI:
    """``body_timeout_s`` is capped at PEER_BODY_TIMEOUT_S."""
    body_timeout_s = min(body_timeout_s, PEER_BODY_TIMEOUT_S)
    gate = Gate(services.hotkey)
    miners = Gate(services.hotkey, validators_only=False)  # its own nonces: miners fill no
    asked_at: dict[str, float] = {}  # hotkey -> last feedback; at most one per registered hotkey
    app = FastAPI(title="SN19 validator", version=PROTOCOL_VERSION, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.add_middleware(RequestSlots, limits=slots, reject=refuse,
                       exempt=frozenset({"/health", "/metrics"}))
    # bodies read before a slot is taken (then at once in ``admit_signed``): a few bytes, so
    # reading one before the headers are screened costs nothing
    app.add_middleware(BodyTimeout, seconds=body_timeout_s, reject=refuse,
                       per_address=BODIES_PER_ADDRESS)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY, reject=refuse)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):
        return refuse(e.status_code, str(e.detail))

    @app.get("/health")
    async def health():
        return {"status": "ok", "hotkey": services.hotkey, "version": PROTOCOL_VERSION}

    @app.get("/metrics")
    async def metrics(request: Request):
        """For this host only unless ``public_metrics``."""
        if not public_metrics and (request.client is None
                                   or request.client.host not in ("127.0.0.1", "::1")):
            return refuse(404, "Not Found")
        return Response(generate_latest(services.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.post(REPORT_PATH)
    async def window_report(request: Request):
        try:
            caller, raw = await admit_signed(request, gate, services.metagraph(), body_timeout_s,
                                             "this validator")
        except Refusal as e:
            return refuse(e.status, e.reason)
        try:
            asked = ReportRequest.model_validate(raw)
        except ValidationError:
            return refuse(422, "expected {\"block\": <window's opening block>}")
        answer = (await services.reports.answer(asked.block, caller.hotkey)
                  if services.reports is not None else None)
        if answer is None:
            return refuse(404, f"no report of a window at block {asked.block} (yet)")
        body, headers = answer
        return Response(body, headers=headers)

    @app.post(FEEDBACK_PATH)
    async def feedback(request: Request):
        from core.validator.feedback import feedback_for

        try:
            graph = services.metagraph()
            caller, raw = await admit_signed(request, miners, graph, body_timeout_s,
                                             "this validator")
            FeedbackRequest.model_validate(raw)
        except Refusal as e:
            return refuse(e.status, e.reason)
        except ValidationError:
            return refuse(422, "expected {} or {\"version\": ...}")
        now = time.monotonic()
        if now - asked_at.get(caller.hotkey, -FEEDBACK_INTERVAL_S) < FEEDBACK_INTERVAL_S:
            return refuse(429, f"at most one feedback request every {FEEDBACK_INTERVAL_S:g} s")
        for hotkey in [h for h in asked_at if graph is not None and graph.by_hotkey(h) is None]:
            del asked_at[hotkey]  # deregistered: the map stays within the metagraph
        asked_at[caller.hotkey] = now
        answer = await services.store.run(feedback_for, services.hotkey, caller.hotkey)
        return Response(answer.model_dump_json(), media_type="application/json")

    return app
