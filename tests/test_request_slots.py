"""``RequestSlots`` alone: a request waits in the queue for a slot and is served when one frees;
beyond the queue, or past the wait, a 503 with ``Retry-After``; health checks pass a full app."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from core.transport.slots import RequestSlots, SlotLimits


class Held:
    """An app whose /held requests hold their slot until ``release``; ``entered`` once one
    holds it."""

    def __init__(self, limits: SlotLimits):
        self.entered, self.release = asyncio.Event(), asyncio.Event()

        async def held(_):
            self.entered.set()
            await self.release.wait()
            return PlainTextResponse("done")

        async def health(_):
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/held", held), Route("/health", health)])
        self.app = RequestSlots(app, limits, lambda status, message: JSONResponse(
            {"error": message}, status_code=status))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://app")


def test_a_queued_request_is_served_when_a_slot_frees_and_one_beyond_the_queue_refused():
    async def main():
        held = Held(SlotLimits(concurrency=1, queue=1, wait_s=60))
        async with held.client() as c:
            first = asyncio.create_task(c.get("/held"))
            await held.entered.wait()
            two = {asyncio.create_task(c.get("/held")) for _ in range(2)}
            done, pending = await asyncio.wait(two, timeout=30,
                                               return_when=asyncio.FIRST_COMPLETED)
            health = await c.get("/health")  # no slot needed
            held.release.set()
            return await first, done.pop().result(), await pending.pop(), health

    first, refused, queued, health = asyncio.run(main())
    assert (first.status_code, first.text, queued.status_code) == (200, "done", 200)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "60"
    assert health.status_code == 200


def test_a_wait_past_its_bound_is_a_503():
    async def main():
        held = Held(SlotLimits(concurrency=1, queue=4, wait_s=0.2))
        async with held.client() as c:
            first = asyncio.create_task(c.get("/held"))
            await held.entered.wait()
            waited = await c.get("/held")
            held.release.set()
            return await first, waited

    first, waited = asyncio.run(main())
    assert first.status_code == 200
    assert waited.status_code == 503 and waited.headers["retry-after"] == "1"
