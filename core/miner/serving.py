"""Serving one request, the part every endpoint shares: admission (signature, registration and
stake, protocol version, the request's shape and task), then a turn (the caller's stake share of
the declaration reserved, a slot in the task's group in arrival order), ended once with what was
served. Every refusal is one exception type, rendered by the app's one handler."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from core.budget import stake_share
from core.errors import Refusal
from core.metagraph import Neuron
from core.miner.metrics import MinerMetrics
from core.miner.state import MinerState
from core.protocol import PATHS, PROTOCOL_VERSION, REQUEST_MODELS, ErrorResponse
from core.tasks import TASKS, Kind
from core.transport.admission import admit_signed


def refusal_response(refusal: Refusal) -> JSONResponse:
    """A request the miner will not serve, as the protocol's error answer: the reason, the
    headers (Retry-After), and for a malformed request the validation detail."""
    if refusal.detail is not None:
        return JSONResponse({"version": PROTOCOL_VERSION, "error": refusal.reason,
                             "detail": refusal.detail}, refusal.status)
    return JSONResponse(ErrorResponse(error=refusal.reason).model_dump(),
                        status_code=refusal.status, headers=refusal.headers)


@dataclass
class Turn:
    """One admitted request's hold on the miner: units reserved in ``period`` against the
    caller's share and a slot of its task. ``finish`` ends it exactly once."""

    serving: Serving
    validator: str
    task: str
    reserved: float
    period: int
    began: float = field(default_factory=time.perf_counter)
    _done: bool = False

    def finish(self, status: int, units: float) -> float:
        """Free the slot and the units not served, count the request; its seconds."""
        seconds = time.perf_counter() - self.began
        if not self._done:
            self._done = True
            state = self.serving.state
            state.slots.release(self.task)
            state.ledger.release(self.validator, self.task, self.reserved - units, self.period)
            self.serving.metrics.served(self.task, self.validator, status, units, seconds)
        return seconds


class Serving:
    """Admission and turns over the miner's state, counted in its metrics."""

    def __init__(self, state: MinerState, metrics: MinerMetrics, body_timeout_s: float):
        self.state, self.metrics, self.body_timeout_s = state, metrics, body_timeout_s

    async def admit(self, request: Request, kind: Kind | None
                    ) -> tuple[Neuron, BaseModel | None]:
        """The calling validator and its parsed message (None for the capacity synapse)."""
        validator, raw = await admit_signed(request, self.state.gate, self.state.metagraph,
                                            self.body_timeout_s, "this miner")
        if kind is None:
            return validator, None
        try:
            message = REQUEST_MODELS[kind].model_validate(raw)
        except ValidationError as e:
            detail = json.loads(e.json(include_url=False, include_input=False,
                                       include_context=False))
            raise Refusal(422, "invalid request", detail=detail) from None
        task = TASKS.get(message.task)
        if task is None or task.kind is not kind or message.task not in self.state.pools:
            raise Refusal(404, f"task {message.task!r} is not served at {PATHS[kind]}")
        return validator, message

    async def start(self, validator: Neuron, task: str, units: float) -> Turn:
        """Reserve ``units`` against the caller's share, then wait for a slot in the task's
        group (in arrival order, never by stake)."""
        state = self.state
        period, left_s = state.period()
        if state.pools[task].concurrency() == 0:
            self.metrics.refuse(task, validator.hotkey, "no worker")
            raise Refusal(503, f"no {task} worker is up", {"Retry-After": "5"})
        assert state.metagraph is not None  # admission refused every call before the first sync
        allowance = state.declared_in(period).get(task, 0.0) * stake_share(state.metagraph,
                                                                          validator.hotkey)
        if not state.ledger.reserve(validator.hotkey, task, units, allowance, period):
            self.metrics.refuse(task, validator.hotkey, "share")
            raise Refusal(429, f"this validator's share of {task} is used up for this period",
                          {"Retry-After": str(max(1, round(left_s)))})
        if not await state.slots.acquire(task):
            state.ledger.release(validator.hotkey, task, units, period)
            self.metrics.refuse(task, validator.hotkey, "busy")
            raise Refusal(429, f"{task} is at its concurrency limit", {"Retry-After": "1"})
        return Turn(self, validator.hotkey, task, units, period)
