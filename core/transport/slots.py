"""Admission by request, not by connection: a neuron's app serves up to ``concurrency`` requests
at once, queues a bounded number more for a bounded wait, and answers the rest at once with 503
and ``Retry-After`` (a clean refusal a client can act on, never a dropped connection).

uvicorn's own ``limit_concurrency`` counts connections, idle keep-alive and half-sent ones
included: 600 concurrent API streams got 600 x 503, and 530 connections that never finished their
headers kept a peer endpoint refusing everyone. It stays only as a safety bound well above this
one (``core.transport.server``). A request takes its slot once its body is in (``BodyTimeout``
reads it first, with its own per-address cap): a client holding its body back holds no slot.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response


@dataclass(frozen=True)
class SlotLimits:
    concurrency: int  # requests served at once
    queue: int  # requests waiting for a slot, at most
    wait_s: float  # for a slot, at most (then 503)

    def __post_init__(self):
        if self.concurrency < 1 or self.queue < 0 or self.wait_s < 0:
            raise ValueError(f"slot limits out of range: {self}")


def refusal(reject: Callable[[int, str], Response], status: int, message: str,
            retry_after_s: float) -> Response:
    """``reject(status, message)`` (an app's error shape) with ``Retry-After``, in whole seconds
    and at least 1."""
    response = reject(status, message)
    response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


class RequestSlots:
    """ASGI middleware admitting HTTP requests by ``limits``; ``reject(status, message)`` is the
    app's error shape. Paths in ``exempt`` (health checks) pass without a slot: they are cheap
    and must answer while the app is full."""

    def __init__(self, app, limits: SlotLimits, reject: Callable[[int, str], Response],
                 exempt: frozenset[str] = frozenset({"/health"})):
        self.app, self.limits, self.reject, self.exempt = app, limits, reject, exempt
        self._slots = asyncio.Semaphore(limits.concurrency)
        self._waiting = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if not await self._acquire():
            await refusal(self.reject, 503, "the server is at its concurrency; retry shortly",
                          self.limits.wait_s)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    async def _acquire(self) -> bool:
        """A slot, at once or after a wait in the queue; False when the queue is full or the
        wait ran out."""
        if self._slots.locked() and self._waiting >= self.limits.queue:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout(self.limits.wait_s):
                await self._slots.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
