"""The miner's signed endpoints, through FastAPI's real stack, on the CPU back end."""

import asyncio
import base64
import time

import pytest
from bittensor import http_auth
from fastapi.testclient import TestClient

from core.backends import load_engine
from core.miner.app import MinerSettings, MinerState, build_app
from core.miner.config import MinerConfig, TaskEntry
from core.miner.latch import DeclarationLatch
from core.miner.limits import Slots
from core.miner.pool import build_pools
from core.protocol import (
    PROTOCOL_VERSION,
    CapacityRequest,
    ChatChunk,
    ChatRequest,
    ImageResponse,
    ImageToImageRequest,
    InpaintRequest,
    TextToImageRequest,
    TrajectoryRequest,
    TrajectoryResponse,
    commitment_key,
)
from core.transport.auth import Gate

CONFIG = MinerConfig(tasks={"chat-llama-3": TaskEntry(capacity=2000),
                            "proteus-text-to-image": TaskEntry(capacity=40),
                            "proteus-image-to-image": TaskEntry(capacity=40),
                            "inpaint": TaskEntry(capacity=40)})


@pytest.fixture(scope="module")
def engines():
    return {t: load_engine(t, e) for t, e in CONFIG.tasks.items()}


def latch(subnet, folder) -> DeclarationLatch:
    """The miner's declarations, kept in ``folder``."""
    return DeclarationLatch(subnet.miner.hotkey, subnet.chain.netuid, folder)


@pytest.fixture
def miner(subnet, engines, tmp_path):
    hotkey = subnet.miner.hotkey.ss58_address
    state = MinerState(
        hotkey=hotkey,
        pools=build_pools(CONFIG, engines),
        chain=subnet.chain,
        gate=Gate(hotkey, min_stake=100),
        period_blocks=1000,
        slots=Slots({}, {t: None for t in CONFIG.tasks}, max_wait_s=5),
        latch=latch(subnet, tmp_path),
    )
    app = build_app(state, MinerSettings(sync_interval_s=3600))
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        yield client, hotkey


def signed(signer, receiver, message=CapacityRequest(), path="/capacity", **sign_kw):
    """(body, headers) of a request signed by ``signer`` for ``receiver``."""
    body = message if isinstance(message, bytes) else message.model_dump_json().encode()
    return body, http_auth.sign(signer, method="POST", path=path, body=body,
                                receiver_ss58=receiver, **sign_kw)


def post(client, path, message, signer, receiver, **sign_kw):
    body, headers = signed(signer, receiver, message, path, **sign_kw)
    return client.post(path, content=body, headers=headers)


def test_capacity_for_a_validator(miner, subnet):
    client, me = miner
    r = post(client, "/capacity", CapacityRequest(), subnet.validator, me)
    assert r.status_code == 200
    assert r.json()["capacities"] == {"chat-llama-3": 2000.0, "proteus-text-to-image": 40.0,
                                      "proteus-image-to-image": 40.0, "inpaint": 40.0}
    assert r.json()["hotkey"] == me
    # a body without a version is of this protocol version, as the models default it
    assert post(client, "/capacity", b"{}", subnet.validator, me).status_code == 200


def test_forged_signature_is_401(miner, subnet):
    client, me = miner
    body, headers = signed(subnet.stranger, me)
    headers["X-Bittensor-Hotkey"] = subnet.validator.ss58_address  # claims to be the validator
    r = client.post("/capacity", content=body, headers=headers)
    assert r.status_code == 401 and "BadSignature" in r.json()["error"]


def test_tampered_body_is_401(miner, subnet):
    client, me = miner
    body, headers = signed(subnet.validator, me)
    r = client.post("/capacity", content=body + b" ", headers=headers)
    assert r.status_code == 401


def test_stale_request_is_401(miner, subnet):
    client, me = miner
    r = post(client, "/capacity", CapacityRequest(), subnet.validator, me,
             nonce_ns=time.time_ns() - 60 * 10**9)
    assert r.status_code == 401 and "StaleRequest" in r.json()["error"]


def test_replayed_request_is_401(miner, subnet):
    client, me = miner
    body, headers = signed(subnet.validator, me)
    assert client.post("/capacity", content=body, headers=headers).status_code == 200
    r = client.post("/capacity", content=body, headers=headers)
    assert r.status_code == 401 and "ReplayedRequest" in r.json()["error"]


def test_wrong_receiver_is_401(miner, subnet):
    client, _ = miner
    r = post(client, "/capacity", CapacityRequest(), subnet.validator, subnet.stranger.ss58_address)
    assert r.status_code == 401 and "WrongReceiver" in r.json()["error"]


def test_unsigned_is_401(miner):
    client, _ = miner
    assert client.post("/capacity", content=b"{}").status_code == 401


@pytest.mark.parametrize(
    "who, reason",
    [
        ("stranger", "not registered"),
        ("no_permit", "no validator permit"),
        ("weak", "below the minimum"),
    ],
)
def test_callers_without_standing_are_403(miner, subnet, who, reason):
    client, me = miner
    r = post(client, "/capacity", CapacityRequest(), getattr(subnet, who), me)
    assert r.status_code == 403 and reason in r.json()["error"]


def test_other_major_version_is_a_clear_400(miner, subnet):
    client, me = miner
    for old in (b'{"version": "3.9.0"}', b'{"version": "4.0.0"}'):  # protocol 4 is refused too
        r = post(client, "/capacity", old, subnet.validator, me)
        assert r.status_code == 400 and "not supported" in r.json()["error"]


def test_invalid_body_is_422(miner, subnet):
    client, me = miner
    body = f'{{"version": "{PROTOCOL_VERSION}", "task": "chat-llama-3", "messages": []}}'.encode()
    r = post(client, "/chat", body, subnet.validator, me)
    assert r.status_code == 422


def test_undeclared_task_is_404(miner, subnet):
    client, me = miner
    msg = TextToImageRequest(task="dreamshaper-text-to-image", prompt="x", steps=2, height=64,
                             width=64)
    r = post(client, "/text-to-image", msg, subnet.validator, me)
    assert r.status_code == 404
    wrong_endpoint = TextToImageRequest(task="inpaint", prompt="x", steps=2, height=64, width=64)
    assert post(client, "/text-to-image", wrong_endpoint, subnet.validator, me).status_code == 404


def chat(client, subnet, me, seed=1, max_tokens=20):
    msg = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "hello"}],
                      max_tokens=max_tokens, seed=seed, temperature=0.8)
    r = post(client, "/chat", msg, subnet.validator, me)
    if r.status_code != 200:
        return r, []
    return r, [ChatChunk.model_validate_json(line) for line in r.text.splitlines()]


def test_chat_streams_tokens_with_logprobs_and_counts_units(miner, subnet, engines):
    client, me = miner
    r, chunks = chat(client, subnet, me)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    tokens = [t for c in chunks for t in c.tokens]
    final = chunks[-1]
    assert final.done and final.completion_tokens == len(tokens) <= 20
    engine = engines["chat-llama-3"]
    expected_prompt = len(engine.prompt_ids(ChatRequest(
        task="chat-llama-3", messages=[{"role": "user", "content": "hello"}])))
    assert final.prompt_tokens == expected_prompt
    assert all(t.logprob <= 0 for t in tokens)
    _, again = chat(client, subnet, me)
    assert [t.token_id for c in again for t in c.tokens] == [t.token_id for t in tokens]


def image(client, subnet, me, path, message):
    r = post(client, path, message, subnet.validator, me)
    assert r.status_code == 200, r.text
    answer = ImageResponse.model_validate(r.json())
    assert all(base64.b64decode(p.thumbnail).startswith(b"\x89PNG") for p in answer.proofs)
    assert all((p.width, p.height) == (message.width, message.height) for p in answer.proofs)
    return answer


def test_every_image_kind_is_served_by_reference_and_charges_steps(miner, subnet):
    client, me = miner
    t2i = TextToImageRequest(task="proteus-text-to-image", prompt="a cat", steps=3, height=64,
                             width=64, seed=9)
    answer = image(client, subnet, me, "/text-to-image", t2i)
    assert answer.units == 3 and not answer.images
    opened = post(client, "/trajectory", TrajectoryRequest(
        task=t2i.task, key=commitment_key(answer.trajectory), latents=[]), subnet.validator, me)
    init = TrajectoryResponse.model_validate_json(opened.content).images[0]
    i2i = ImageToImageRequest(task="proteus-image-to-image", prompt="a dog", steps=4, height=64,
                              width=64, init_image=init)
    assert image(client, subnet, me, "/image-to-image", i2i).units == 4
    inpaint = InpaintRequest(task="inpaint", prompt="a hat", steps=2, num_images=2, height=64,
                             width=64, init_image=init, mask_image=init)
    answer = image(client, subnet, me, "/inpaint", inpaint)
    assert answer.units == 4 and len(answer.proofs) == 2


def test_share_used_up_is_429_while_another_validator_is_served(miner, subnet):
    """Alice holds 9000 of 12010 permit stake: ~1499 of the 2000 tokens; Dave 3000: ~500."""
    client, me = miner
    served = 0
    for seed in range(20):
        r, chunks = chat(client, subnet, me, seed=seed, max_tokens=400)
        if r.status_code == 429:
            break
        served += chunks[-1].units
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert "used up" in r.json()["error"]
    assert 0 < served <= 2000 * 9000 / 12010
    msg = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "hi"}],
                      max_tokens=100)
    assert post(client, "/chat", msg, subnet.other, me).status_code == 200
    metrics = client.get("/metrics").text
    validator = subnet.validator.ss58_address
    line = f'reason="share",task="chat-llama-3",validator="{validator}"'
    assert f"sn19_miner_refused_total{{{line}}} 1.0" in metrics
    assert 'sn19_miner_declared_units{task="chat-llama-3"} 2000.0' in metrics
    assert "sn19_miner_units_total" in metrics


def test_a_request_replayed_after_a_restart_is_still_refused(subnet, engines, tmp_path):
    from core.transport.nonces import SqliteNonceStore

    me = subnet.miner.hotkey.ss58_address
    body, headers = signed(subnet.validator, me)

    def app():
        state = MinerState(
            hotkey=me,
            pools=build_pools(CONFIG, engines),
            chain=subnet.chain,
            gate=Gate(me, nonce_store=SqliteNonceStore(tmp_path / "n.sqlite3")),
            period_blocks=1000,
            slots=Slots({}, {t: None for t in CONFIG.tasks}, 5),
            latch=latch(subnet, tmp_path),
        )
        return TestClient(build_app(state, MinerSettings(sync_interval_s=3600)))

    with app() as first:
        assert first.post("/capacity", content=body, headers=headers).status_code == 200
    with app() as restarted:  # a new process, the same state folder
        r = restarted.post("/capacity", content=body, headers=headers)
        assert r.status_code == 401 and "ReplayedRequest" in r.json()["error"]


def test_the_signature_covers_the_request_target_as_sent(miner, subnet):
    client, me = miner
    body, headers = signed(subnet.validator, me, path="/capacity?x=1")
    assert client.post("/capacity?x=1", content=body, headers=headers).status_code == 200
    body, headers = signed(subnet.validator, me, path="/capacity")  # signed for another target
    assert client.post("/cap%61city", content=body, headers=headers).status_code == 401


def test_only_an_admitted_validator_writes_to_the_nonce_store(subnet):
    from core.errors import Refusal
    from core.transport.auth import Gate

    class Spy:
        retention = 60.0

        def __init__(self):
            self.stored = []

        def check_and_store(self, hotkey, nonce):
            if (hotkey, nonce) in self.stored:
                return False
            self.stored.append((hotkey, nonce))
            return True

    me = subnet.miner.hotkey.ss58_address
    gate = Gate(me, min_stake=100, nonce_store=(spy := Spy()))
    graph = asyncio.run(subnet.chain.metagraph())
    for stranger in (subnet.weak, subnet.no_permit, subnet.stranger):  # signed, but no validator
        body, headers = signed(stranger, me)
        with pytest.raises(Refusal) as refused:
            gate.screen(headers, graph)  # decided from the headers, before any body
        assert refused.value.status == 403
        with pytest.raises(Refusal):
            gate.admit(headers, body, "POST", "/capacity", graph)
    assert spy.stored == []
    body, headers = signed(subnet.validator, me)
    gate.admit(headers, body, "POST", "/capacity", graph)
    assert len(spy.stored) == 1
    with pytest.raises(Refusal, match="Replayed"):
        gate.admit(headers, body, "POST", "/capacity", graph)


def test_each_endpoint_reads_no_more_than_its_largest_valid_request(miner, subnet):
    client, me = miner
    for path, size in (("/capacity", 10_000), ("/text-to-image", 300_000), ("/chat", 7_000_000)):
        body, headers = signed(subnet.validator, me, b"x" * size, path=path)
        assert client.post(path, content=body, headers=headers).status_code == 413, path
    body, headers = signed(subnet.validator, me, b"x" * 300_000, path="/image-to-image")
    assert client.post("/image-to-image", content=body, headers=headers).status_code != 413


def test_metrics_only_for_this_host_and_no_docs(subnet, engines, tmp_path):
    hotkey = subnet.miner.hotkey.ss58_address
    state = MinerState(hotkey=hotkey, pools=build_pools(CONFIG, engines),
                       chain=subnet.chain, gate=Gate(hotkey), period_blocks=1000,
                       slots=Slots({}, {t: None for t in CONFIG.tasks}, max_wait_s=5),
                       latch=latch(subnet, tmp_path))
    app = build_app(state, MinerSettings(sync_interval_s=3600))
    with TestClient(app, client=("203.0.113.7", 40000)) as outside:
        assert outside.get("/metrics").status_code == 404  # hotkeys and worker URLs stay in
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert outside.get(path).status_code == 404, path
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        assert "sn19_miner_declared_units" in local.get("/metrics").text
    public = build_app(state, MinerSettings(sync_interval_s=3600, public_metrics=True))
    with TestClient(public, client=("203.0.113.7", 40000)) as outside:
        assert outside.get("/metrics").status_code == 200


class Trickle:
    """A chat engine handing over one token every 20 ms, as a GPU engine does."""

    def prompt_ids(self, request):
        return [1, 2, 3]

    async def stream(self, request):
        from core.protocol import ChatToken

        for i in range(request.max_tokens):
            await asyncio.sleep(0.02)
            yield [ChatToken(token_id=10 + i, text="x", logprob=-0.5)]


def test_a_chat_stream_sends_its_first_token_at_once_then_lines_at_most_every_interval(
        subnet, engines, tmp_path):
    from core.miner.app import LINE_INTERVAL_S

    me = subnet.miner.hotkey.ss58_address
    state = MinerState(hotkey=me, pools=build_pools(CONFIG, {**engines, "chat-llama-3": Trickle()}),
                       chain=subnet.chain, gate=Gate(me, min_stake=100), period_blocks=1000,
                       slots=Slots({}, {t: None for t in CONFIG.tasks}, max_wait_s=5),
                       latch=latch(subnet, tmp_path))
    msg = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "hi"}],
                      max_tokens=40, seed=1)
    with TestClient(build_app(state, MinerSettings(sync_interval_s=3600))) as client:
        r = post(client, "/chat", msg, subnet.validator, me)
    lines = [ChatChunk.model_validate_json(x) for x in r.content.splitlines() if x.strip()]
    tokens = [t.token_id for line in lines for t in line.tokens]
    assert tokens == list(range(10, 50)) and lines[-1].done
    assert len(lines[0].tokens) == 1  # the first token is not held back
    # 40 tokens over >= 0.8 s: without coalescing 41 lines; with it about one per interval
    assert len(lines) - 1 <= 2 + 0.8 * 3 / LINE_INTERVAL_S
    assert len(lines) < 20
