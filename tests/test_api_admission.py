"""The organic API under load and with its store away, served by uvicorn on 127.0.0.1 with the
validator's server limits: a burst beyond the API's concurrency is served up to it and the rest
refused cleanly (503/429 with Retry-After, never a dropped connection); a store that fails or
hangs is a fast 503; a client's ordinary misbehaviour logs no traceback. The miner is faked at
``dispatch.chat_answer`` (one token, then the end once the test releases it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time

import aiohttp
import pytest
from bittensor.sp_core import Keypair

from core.protocol import ChatChunk, ChatToken
from core.storage import StorageError, open_store
from core.transport.server import ServerLimits, raise_open_files_limit
from core.validator import dispatch, keys
from core.validator.api import DEFAULT_SLOTS, build_api
from core.validator.counting import PromptCounter
from core.validator.organic import STORE_TIMEOUT_S
from devtools.localproc import free_port
from tests.organic_net import open_period
from tests.servers import serving_here

BURST = 600
CHAT = {"model": "chat-llama-3", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1, "stream": True}


class HeldMiner:
    """``dispatch.chat_answer``'s stand-in: an answer whose body has a token at once, then its
    final line only once ``release`` is set, so every stream served holds its slot until the
    test lets it go."""

    def __init__(self):
        self.release = asyncio.Event()
        self.counter = PromptCounter("tiny")  # the validator's (organic_net: tokenizers tiny)

    @contextlib.asynccontextmanager
    async def chat_answer(self, client, neuron, message):
        final = ChatChunk(done=True, prompt_tokens=self.counter.prompt_tokens(message),
                          completion_tokens=1)
        blocks = [ChatChunk.of([ChatToken(69, "a", -0.5)]), final]

        class Body:
            async def readany(_):
                if len(blocks) == 1:
                    await self.release.wait()
                return blocks.pop(0).model_dump_json().encode() + b"\n" if blocks else b""

        yield Body()


@pytest.fixture
def planned(tmp_path, make_net, monkeypatch):
    """A validator's chain and store with one miner (reached only through the fake dispatch)."""
    net = make_net(age_blocks=10_000)
    chain, wallet = net.local, net.validator(stake=100)
    chain.register(Keypair.create_from_uri("//fast").ss58_address, "c", registered_at=0,
                   endpoint="http://127.0.0.1:9")
    miner = HeldMiner()
    monkeypatch.setattr(dispatch, "chat_answer", miner.chat_answer)
    # a held stream is neither a stall nor late, however long a busy machine takes to refuse
    # the rest of the burst
    monkeypatch.setattr(dispatch, "CHAT_STALL_S", 120.0)
    monkeypatch.setattr(dispatch, "timeout_for", lambda task, units: 120.0)
    store = open_store(str(tmp_path / "v.sqlite3"))
    yield chain, wallet, store, miner
    store.close()


def server_options() -> dict:
    """The validator's (``neurons/validator.py``): the connection bound well above the API's."""
    raise_open_files_limit()  # a burst's sockets, both ends in this process
    return ServerLimits(max_connections=4096).uvicorn_options()


async def ask(http: aiohttp.ClientSession, url: str, key: str, answered) -> tuple:
    """One streamed chat: (status, Retry-After, the whole body); ``answered()`` once its status
    is in. Any connection error propagates: a dropped request fails the test."""
    async with http.post(url + "/v1/chat/completions", json=CHAT,
                         headers={"Authorization": f"Bearer {key}"}) as r:
        answered()
        return r.status, r.headers.get("Retry-After"), await r.text()


def test_a_burst_is_served_up_to_the_concurrency_and_the_rest_refused_cleanly(planned):
    chain, wallet, store, miner = planned
    key = keys.create(store, "load", per_minute=10 * BURST)

    async def main():
        v = await open_period(chain, wallet, store, {})
        api = build_api(v.api_services())
        statuses = asyncio.Event()
        count = 0

        def answered():
            nonlocal count
            count += 1
            if count == BURST:
                statuses.set()

        connector = aiohttp.TCPConnector(limit=0)  # every request on a connection of its own
        async with (serving_here(api, free_port(), **server_options()) as url,
                    aiohttp.ClientSession(connector=connector) as http):
            began = time.monotonic()
            asks = [asyncio.create_task(ask(http, url, key, answered)) for _ in range(BURST)]
            # every stream served is held open until all have their status: the burst is whole
            await asyncio.wait_for(statuses.wait(), 60)
            refused_in = time.monotonic() - began
            miner.release.set()
            results = await asyncio.wait_for(asyncio.gather(*asks), 60)
        await v.close()
        return results, refused_in

    results, refused_in = asyncio.run(main())
    served = [body for status, _, body in results if status == 200]
    refused = [(status, retry, body) for status, retry, body in results if status != 200]
    assert len(served) == DEFAULT_SLOTS.concurrency
    for body in served:  # each stream whole: its token, its end, no error event
        events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "a"
    assert len(refused) == BURST - DEFAULT_SLOTS.concurrency
    for status, retry, body in refused:
        assert status in (503, 429) and int(retry) >= 1
        assert json.loads(body)["error"]["code"] == status
    # refusals come within the queue's wait, not after a stream ends (margin for a busy machine)
    assert refused_in < DEFAULT_SLOTS.wait_s + 30
    assert len([r for r in store.records(7) if r.organic]) == len(served)
    print(f"{len(served)} served, {len(refused)} refused "
          f"({sum(s == 503 for s, _, _ in refused)} x 503, "
          f"{sum(s == 429 for s, _, _ in refused)} x 429), all answered in {refused_in:.1f} s")


@pytest.mark.parametrize("how", ["fails", "hangs"])
def test_a_store_away_is_a_fast_503_with_retry_after(planned, monkeypatch, caplog, how):
    chain, wallet, store, _ = planned
    key = keys.create(store, "gil", per_minute=100)
    unblock = threading.Event()

    def away(*_):
        if how == "hangs":  # a database that takes its time to fail (a driver's connect timeout)
            unblock.wait(60)
        raise StorageError("v.sqlite3: OperationalError: the database is away")

    async def main():
        v = await open_period(chain, wallet, store, {})
        monkeypatch.setattr(store, "count_api_use", away)
        async with (serving_here(build_api(v.api_services()), free_port(), log_config=None,
                                 **server_options()) as url,
                    aiohttp.ClientSession() as http):
            began = time.monotonic()
            async with http.get(url + "/v1/models",
                                headers={"Authorization": f"Bearer {key}"}) as r:
                answer = r.status, r.headers.get("Retry-After"), await r.json()
            took = time.monotonic() - began
            unblock.set()  # the store's thread may end
        await v.close()
        return answer, took

    (status, retry, body), took = asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info]  # a 500 was logged with a traceback
    assert status == 503 and int(retry) >= 1 and body["error"]["type"] == "api_error"
    assert "StorageError" not in body["error"]["message"]  # the store's own words stay inside
    assert took < STORE_TIMEOUT_S + 10  # its deadline, and a margin for a busy machine


def test_ordinary_client_behaviour_logs_no_traceback(planned, caplog):
    """A client leaving mid-stream or mid-body, malformed JSON, a body over the limit, an unknown
    model named at length, an oversize field name: answered (or ended) with a one-line log at
    most."""
    chain, wallet, store, miner = planned
    key = keys.create(store, "eve", per_minute=100)
    auth = {"Authorization": f"Bearer {key}"}

    async def main():
        v = await open_period(chain, wallet, store, {})
        api = build_api(v.api_services(), max_body=10_000)
        out = {}
        # log_config=None: uvicorn's loggers reach caplog (its own config keeps them from it)
        async with (serving_here(api, free_port(), **server_options(), log_config=None) as url,
                    aiohttp.ClientSession() as http):
            chat = url + "/v1/chat/completions"
            for _ in range(3):  # leaves after its first event; the miner then ends the answer
                async with http.post(chat, json=CHAT, headers=auth) as r:
                    assert (await r.content.readline()).startswith(b"data: ")
                    r.close()  # its connection with it
            miner.release.set()
            _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
            writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: v\r\nAuthorization: "
                         f"Bearer {key}\r\nContent-Length: 100\r\n\r\n{{\"mo".encode())
            await writer.drain()
            writer.close()  # it leaves mid-body
            for name, kwargs in {
                "malformed": {"data": b'{"model": ', "headers": {**auth, "Content-Type":
                                                                 "application/json"}},
                "oversize": {"data": b"x" * 20_000, "headers": auth},
                "unknown model": {"json": {**CHAT, "model": "m" * 5_000}, "headers": auth},
                "odd field": {"json": {**CHAT, "x" * 5_000: 1}, "headers": auth},
            }.items():
                async with http.post(chat, **kwargs) as r:
                    out[name] = r.status, await r.text()
            async with http.post(url + "/v1/images/generations", headers=auth, json={
                    "model": "proteus-text-to-image", "prompt": "a cat", "size": "9" * 3_000}) as r:
                out["size"] = r.status, await r.text()
            # the server answers its next request after the clients that left: their streams
            # are closed and recorded (what would have logged a traceback has run)
            async with http.get(url + "/health") as r:
                assert r.status == 200
        await v.close()
        return out

    with caplog.at_level(logging.DEBUG):
        out = asyncio.run(main())
    assert {k: s for k, (s, _) in out.items()} == {
        "malformed": 400, "oversize": 413, "unknown model": 404, "odd field": 400, "size": 400}
    assert all(len(text) < 1_000 for _, text in out.values())  # no client text echoed whole
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert len([r for r in store.records(7) if r.organic]) == 3
