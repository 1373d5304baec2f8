"""The validator's signed client signs a request once it holds a connection, so a request that
queued behind others still reaches the miner fresh (a stale one is a 401, counted against the
miner, docs/protocol.md §6)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.test_utils import TestServer
from bittensor.sp_core import Keypair
from pydantic import BaseModel

from core.transport.client import SignedClient


class Ping(BaseModel):
    n: int


async def _ages_when_queued(requests: int) -> tuple[list[float], float]:
    ages: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        ages.append(time.time() - int(request.headers["X-Bittensor-Nonce"]) / 1e9)
        await asyncio.sleep(0.2)  # a busy miner: each answer takes a while
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/ping", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = SignedClient(Keypair.create_from_uri("//Alice"), max_connections=1)
    try:
        started = time.monotonic()
        endpoint = f"http://127.0.0.1:{server.port}"
        replies = await asyncio.gather(*(client.post(endpoint, "/ping", "receiver", Ping(n=i),
                                                     30.0, 1024) for i in range(requests)))
        assert all(r.status == 200 for r in replies)
        return ages, time.monotonic() - started
    finally:
        await client.close()
        await server.close()


def test_a_request_queued_for_a_connection_is_signed_when_it_goes():
    ages, elapsed = asyncio.run(_ages_when_queued(8))
    assert len(ages) == 8 and elapsed >= 8 * 0.2
    # signed first, the last would have waited ~1.4 s in the queue; signed when it goes, each
    # reaches the server as fresh as the first
    assert max(ages) < elapsed / 4, (ages, elapsed)
