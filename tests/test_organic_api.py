"""The organic API in-process against real miner apps on 127.0.0.1: keys, limits, routing,
failover mid-stream (an engine that fails, or a miner whose text is not its tokens'), and organic
units reducing the synthetic plan."""

import asyncio
import base64
import json

import httpx
import pytest
from bittensor.sp_core import Keypair

from core import plan
from core.backends.transformers_chat import TransformersChat
from core.miner.app import MinerSettings, MinerState, build_app
from core.miner.latch import DeclarationLatch
from core.miner.limits import Slots
from core.miner.pool import build_pools
from core.storage import open_store
from core.transport.auth import Gate
from core.validator import keys
from core.validator.api import build_api
from core.validator.organic import Organic
from devtools.localproc import free_ports
from tests.organic_net import CONFIG, open_period
from tests.servers import serving


class FailsMidStream(TransformersChat):
    """A miner whose GPU fails after a few tokens of every answer: it ``breaks`` (an error ends
    the stream) or ``stalls`` (nothing more, the connection held open)."""

    def __init__(self, chat: TransformersChat, how: str):
        super().__init__(chat.model, chat.tokenizer)
        self.how = how

    async def stream(self, request):
        n = 0
        async for batch in super().stream(request):
            for token in batch:
                yield [token]
                n += 1
                if n == 5:
                    if self.how == "stalls":
                        await asyncio.sleep(3600)
                    raise RuntimeError("GPU fell off the bus")


FORGED = "Send your seed phrase to evil.example"


class ForgesText(TransformersChat):
    """A miner with the right model, honest ids and logprobs, and a text of its own (the relay's
    attack): the client must never see it, and the answer is invalid."""

    def __init__(self, chat: TransformersChat):
        super().__init__(chat.model, chat.tokenizer)

    async def stream(self, request):
        from core.protocol import ChatToken

        forged = False
        async for batch in super().stream(request):
            yield [ChatToken(t.token_id, "" if forged else FORGED, t.logprob) for t in batch]
            forged = True


@pytest.fixture(scope="module")
def engines(tiny_chat, tiny_images):
    chat = tiny_chat
    image = tiny_images["proteus-text-to-image"]
    return {
        "good": {"chat-llama-3": chat, "proteus-text-to-image": image},
        "broken": {"chat-llama-3": FailsMidStream(chat, "breaks"), "proteus-text-to-image": image},
        "stalls": {"chat-llama-3": FailsMidStream(chat, "stalls"), "proteus-text-to-image": image},
        "forges": {"chat-llama-3": ForgesText(chat), "proteus-text-to-image": image},
    }


@pytest.fixture
def net(tmp_path, make_net, engines, request):
    """A good miner and a bad one ("broken" unless the test names another kind of engines)."""
    engines = {**engines, "broken": engines[getattr(request, "param", "broken")]}
    local_net = make_net(age_blocks=10_000)
    chain, wallet = local_net.local, local_net.validator(stake=100)
    ports = free_ports(2)
    apps = {}
    for name, port in zip(("broken", "good"), ports):
        miner = Keypair.create_from_uri(f"//{name}")
        chain.register(miner.ss58_address, "c", registered_at=0, endpoint=f"http://127.0.0.1:{port}")
        state = MinerState(
            hotkey=miner.ss58_address,
            pools=build_pools(CONFIG, engines[name]),
            chain=chain.chain(),
            gate=Gate(miner.ss58_address),
            period_blocks=10**6,
            slots=Slots({}, {t: None for t in CONFIG.tasks}, 30),
            latch=DeclarationLatch(miner, chain.netuid, tmp_path / name),
        )
        app = build_app(state, MinerSettings(sync_interval_s=3600))
        apps[name] = (app, port, miner.ss58_address)
    store = open_store(str(tmp_path / "v.sqlite3"))
    with serving(apps["broken"][0], apps["broken"][1]), serving(apps["good"][0], apps["good"][1]):
        yield chain, wallet, store, {n: a[2] for n, a in apps.items()}


def client(api):
    """The API in this process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")


def test_keys_limits_and_errors(net):
    chain, wallet, store, _ = net
    key = keys.create(store, "alice", per_minute=1)
    old = keys.create(store, "old")
    keys.revoke(store, "old")
    bob = {"Authorization": f"Bearer {keys.create(store, 'bob')}"}

    async def main():
        v = await open_period(chain, wallet, store, {})
        async with client(build_api(v.api_services(), max_body=10_000)) as c:
            out = {
                "none": (await c.get("/v1/models")).status_code,
                "bad": (
                    await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
                ).status_code,
                "revoked": (
                    await c.get("/v1/models", headers={"Authorization": f"Bearer {old}"})
                ).status_code,
            }
            auth = {"Authorization": f"Bearer {key}"}
            models = await c.get("/v1/models", headers=auth)
            out["models"] = {m["id"]: m["remaining"] for m in models.json()["data"]}
            big = await c.post("/v1/chat/completions", headers=auth, content=b"x" * 20_000)
            out["big"] = big.status_code
            unknown = await c.post("/v1/chat/completions", headers=bob, json={
                "model": "m" * 5000, "messages": [{"role": "user", "content": "hi"}]})
            out["unknown"] = unknown.status_code, len(unknown.text)
            limited = await c.get("/v1/models", headers=auth)
            out["limited"] = (limited.status_code, limited.headers.get("retry-after"),
                              limited.json()["error"]["type"])
        await v.client.close()
        return out

    out = asyncio.run(main())
    assert (out["none"], out["bad"], out["revoked"]) == (401, 401, 401)
    assert out["models"]["chat-llama-3"] == 100_000 and out["models"]["inpaint"] == 0
    assert out["big"] == 413
    assert out["unknown"][0] == 404 and out["unknown"][1] < 1000  # the name is not echoed whole
    with pytest.raises(ValueError, match="1 to 64 characters"):
        keys.create(store, "k" * 65)
    assert out["limited"][0] == 429 and int(out["limited"][1]) >= 1
    assert out["limited"][2] == "rate_limit_error"


async def stream_chat(net, body: dict, max_attempts: int = 3):
    """A streamed chat through the API, routed to the bad miner first (the good one looks far
    worse on quality): (status, the data lines)."""
    chain, wallet, store, hotkeys = net
    key = keys.create(store, f"k{len(keys.listing(store))}", per_minute=100)
    v = await open_period(chain, wallet, store, {(hotkeys["good"], "chat-llama-3"): 1e-6})
    async with (client(build_api(v.api_services(), max_attempts=max_attempts)) as c,
                c.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                         headers={"Authorization": f"Bearer {key}"}) as r):
        events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    await v.client.close()
    return r.status_code, events


# an engine error is a 5xx (or a stream cut short: invalid); a stall is a timeout; a text that
# is not the tokens' is invalid, and none of it reaches the client
@pytest.mark.parametrize("net, failed", [("broken", {"invalid", "5xx"}), ("stalls", {"timeout"}),
                                         ("forges", {"invalid"})], indirect=["net"])
def test_a_miner_failing_mid_stream_is_replaced_unseen(net, failed, engines, monkeypatch):
    from core.protocol import ChatRequest
    from core.validator import dispatch

    monkeypatch.setattr(dispatch, "CHAT_STALL_S", 1.0)
    _, _, store, hotkeys = net
    body = {"model": "chat-llama-3", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 30, "temperature": 0.8, "seed": 42}
    status, events = asyncio.run(asyncio.wait_for(stream_chat(net, body), 60))
    assert status == 200 and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    expected = "".join(t.text for t in engines["good"]["chat-llama-3"].tokens(ChatRequest(
        task="chat-llama-3", messages=[{"role": "user", "content": "hello"}], max_tokens=30,
        temperature=0.8, seed=42)))
    assert text == expected and "evil" not in text
    records = {r.hotkey: r for r in store.records(7)}
    assert records[hotkeys["broken"]].outcome.value in failed
    assert records[hotkeys["good"]].outcome.value == "ok" and records[hotkeys["good"]].organic
    used_is_the_sum_of_records(store, 7)


def test_organic_units_reduce_the_synthetic_plan_and_images_are_served(net):
    chain, wallet, store, hotkeys = net
    key = keys.create(store, "carol", per_minute=100)

    async def main():
        v = await open_period(
            chain, wallet, store, {(hotkeys["broken"], "proteus-text-to-image"): 1e-6}
        )
        async with client(build_api(v.api_services())) as c:
            r = await c.post("/v1/images/generations", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "proteus-text-to-image", "prompt": "a cat",
                                   "size": "64x64", "steps": 20, "n": 2})
        await v.client.close()
        return r, v

    r, v = asyncio.run(main())
    assert r.status_code == 200, r.text
    assert all(base64.b64decode(d["b64_json"]).startswith(b"\x89PNG") for d in r.json()["data"])
    served = next(rec for rec in store.records(7) if rec.organic)
    key_ = (served.hotkey, "proteus-text-to-image")
    assert served.units == 40 and v.book.used()[key_] == 40
    # a window that opened before the organic request asks 2000 x 25/300 = 167 steps (17
    # requests of 10); the organic 40 count first: the first four find their share served
    sends = plan.window_plan([v.book.contenders[key_]], {}, 300, 60.0)
    assert len(sends) == 17 and sends[3].cap == 40
    sent = [s for s in sends if v.book.reserve(key_, s.units, cap=s.cap) is not None]
    assert len(sent) == 13 and v.book.used()[key_] == 40 + 13 * 10


def used_is_the_sum_of_records(store, period):
    records = store.records(period)
    for (hotkey, task), (_, used) in store.spent(period).items():
        assert used == sum(r.units for r in records if (r.hotkey, r.task) == (hotkey, task))


@pytest.mark.parametrize("net", ["stalls"], indirect=True)
def test_a_stall_with_no_one_to_take_over_ends_in_an_error_event_and_done(net, monkeypatch):
    from core.validator import dispatch

    monkeypatch.setattr(dispatch, "CHAT_STALL_S", 1.0)
    body = {"model": "chat-llama-3", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20}
    status, events = asyncio.run(asyncio.wait_for(stream_chat(net, body, max_attempts=1), 60))
    assert status == 200 and events[-1] == "data: [DONE]" and "error" in json.loads(events[-2][6:])
    store = net[2]
    assert [r.outcome.value for r in store.records(7)] == ["timeout"]
    used_is_the_sum_of_records(store, 7)


def test_a_client_that_leaves_mid_stream_leaves_one_record_and_its_units(net):
    chain, wallet, store, hotkeys = net

    async def main():
        v = await open_period(chain, wallet, store, {(hotkeys["broken"], "chat-llama-3"): 1e-6})
        organic = Organic(v.book, v.traffic)
        from core.protocol import ChatRequest
        for _ in range(5):  # each client reads its first tokens, then goes away
            stream = organic.chat(ChatRequest(task="chat-llama-3", max_tokens=200,
                                              messages=[{"role": "user", "content": "hello"}]))
            first = await anext(stream)
            await stream.aclose()
        await v.client.close()
        return first

    first = asyncio.run(main())
    assert first.tokens
    records = store.records(7)
    assert len(records) == 5 and {r.outcome.value for r in records} == {"abandoned"}
    assert all(0 < r.units < 200 for r in records)  # the prompt and the tokens it had, no more
    used_is_the_sum_of_records(store, 7)


def test_fields_not_implemented_and_zero_counts_are_400s_naming_them(net):
    chain, wallet, store, _ = net
    key = keys.create(store, "fay", per_minute=100)
    chat = {"model": "chat-llama-3", "messages": [{"role": "user", "content": "hi"}]}
    image = {"model": "proteus-text-to-image", "prompt": "a cat", "size": "64x64"}
    cases = [
        ("/v1/chat/completions", {**chat, "stop": ["x" * 65]}, "stop"),
        ("/v1/chat/completions", {**chat, "logit_bias": {"1": 5}}, "logit_bias"),
        ("/v1/chat/completions", {**chat, "tools": [{"type": "function"}]}, "tools"),
        (
            "/v1/chat/completions",
            {**chat, "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ("/v1/chat/completions", {**chat, "logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {**chat, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {**chat, "max_completion_tokens": -5}, "max_completion_tokens"),
        ("/v1/images/generations", {**image, "steps": 0}, "steps"),
        ("/v1/images/generations", {**image, "style": "vivid"}, "style"),
    ]

    async def main():
        v = await open_period(chain, wallet, store, {})
        out = []
        async with client(build_api(v.api_services())) as c:
            for path, body, _ in cases:
                r = await c.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
                out.append((r.status_code, r.json()["error"]["message"]))
            ok = await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={**chat, "max_tokens": 3, "user": "u1", "presence_penalty": 0})
        await v.client.close()
        return out, ok.status_code

    out, ok = asyncio.run(main())
    for (status, message), (_, _, field) in zip(out, cases):
        assert status == 400 and message.startswith(field), (field, status, message)
    assert ok == 200  # neutral values of the fields it does not implement are accepted


def test_stop_ends_the_miner_s_completion_and_the_client_gets_the_text_before_it(net):
    """OpenAI's ``stop``, end to end: the miner stops at the token that completes the sequence
    (charged for no more), the client's text ends before it, streamed or not."""
    chain, wallet, store, hotkeys = net
    key = keys.create(store, "sam", per_minute=100)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "chat-llama-3", "messages": [{"role": "user", "content": "tell me"}],
            "max_tokens": 40, "seed": 11, "temperature": 1.0}

    async def main():
        # only the good miner: the broken one would fail the requests
        v = await open_period(chain, wallet, store, {(hotkeys["broken"], "chat-llama-3"): 0.0})
        async with client(build_api(v.api_services())) as c:
            free = (await c.post("/v1/chat/completions", headers=auth, json=body)).json()
            text = free["choices"][0]["message"]["content"]
            sequence = next(text[i:i + 3] for i in range(4, len(text) - 3)
                            if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3])
            stopped = (await c.post("/v1/chat/completions", headers=auth,
                                    json={**body, "stop": sequence})).json()
            events = []
            async with c.stream("POST", "/v1/chat/completions", headers=auth,
                                json={**body, "stop": [sequence], "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        events.append(json.loads(line[6:]))
        await v.client.close()
        return text, sequence, free, stopped, events

    text, sequence, free, stopped, events = asyncio.run(main())
    before = text[:text.find(sequence)]
    assert stopped["choices"][0]["message"]["content"] == before
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < free["usage"]["completion_tokens"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed == before and events[-1]["choices"][0]["finish_reason"] == "stop"
