"""Miner worker pools with real processes on 127.0.0.1: neurons/worker.py on the tiny CPU back
ends, the OpenAI-compatible client against it, and a miner front end routing to two workers
while one of them dies and comes back."""

from __future__ import annotations

import asyncio
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from bittensor import http_auth

from core.backends.remote import OpenAIChat, WorkerError, WorkerImages
from core.protocol import (
    CapacityRequest,
    CapacityResponse,
    ChatChunk,
    ChatRequest,
    TextToImageRequest,
    stop_at,
)
from devtools.localproc import free_port, free_ports, neuron, wait_healthy

pytestmark = [pytest.mark.process]

TOKEN = "test-worker-token-0123456789"
HEALTH_S = 1.0


def start_worker(port: int, task: str = "chat-llama-3") -> subprocess.Popen:
    proc = neuron("worker", ["--task", task, "--host", "127.0.0.1", "--port", str(port),
                             "--torch-threads", "1", "--concurrency", "1"],
                  env={"SN19_WORKER_TOKEN": TOKEN},
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(port, proc, time.monotonic() + 120)
    return proc


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def chat_request(seed: int, max_tokens: int = 12) -> ChatRequest:
    return ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": f"hi {seed}"}],
                       max_tokens=max_tokens, temperature=0.8, seed=seed)


def test_openai_client_streams_token_ids_logprobs_and_usage_from_a_worker_server(tiny_chat):
    port = free_port()
    worker = start_worker(port)
    try:
        async def run():
            client = OpenAIChat(f"http://127.0.0.1:{port}", "any", TOKEN)
            wrong = OpenAIChat(f"http://127.0.0.1:{port}", "any", "not-the-token")
            try:
                assert await client.alive()
                assert not await wrong.alive()  # a wrong token: down, not serving 401s
                chunks = [c async for c in client.chunks(chat_request(5, 40))]
                with pytest.raises(WorkerError) as refused:
                    [c async for c in wrong.chunks(chat_request(5))]
                # the request's stop sequences reach the worker's engine: it ends there
                text = "".join(t.text for c in chunks for t in c.tokens)
                sequence = next(text[i:i + 3] for i in range(4, len(text) - 3)
                                if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3])
                asked = chat_request(5, 40).model_copy(update={"stop": [sequence]})
                stopped = [t async for c in client.chunks(asked) for t in c.tokens]
                assert stop_at("".join(t.text for t in stopped), [sequence]) is not None
                assert stop_at("".join(t.text for t in stopped[:-1]), [sequence]) is None
                return chunks, refused.value.status
            finally:
                await client.close()
                await wrong.close()

        chunks, refused = asyncio.run(run())
        # OpenAI's own client reads it too, whole or streamed
        official = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN)
        whole = official.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "hi 5"}], max_tokens=40, seed=5,
            temperature=0.8)
        streamed = official.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "hi 5"}], max_tokens=40, seed=5,
            temperature=0.8, stream=True, logprobs=True)
        streamed_text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    finally:
        stop(worker)
    assert refused == 401
    final = chunks[-1]
    tokens = [t for c in chunks[:-1] for t in c.tokens]
    assert final.done and final.completion_tokens == len(tokens) > 0
    # the same tiny model in this process samples the same tokens from the same seed
    local = tiny_chat
    expected = list(local.tokens(chat_request(5, 40)))
    assert [t.token_id for t in tokens] == [t.token_id for t in expected]
    assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(tokens, expected))
    assert "".join(t.text for t in tokens) == "".join(t.text for t in expected)
    assert final.prompt_tokens == len(local.prompt_ids(chat_request(5, 40)))
    text = "".join(t.text for t in expected)
    assert whole.choices[0].message.content == text == streamed_text
    assert whole.usage.completion_tokens == len(expected)


def test_worker_images_client_against_a_worker_server():
    port = free_port()
    worker = start_worker(port, "proteus-text-to-image")
    try:
        async def run():
            client = WorkerImages(f"http://127.0.0.1:{port}", TOKEN)
            try:
                return await client.generate(TextToImageRequest(
                    task="proteus-text-to-image", prompt="a cat", steps=2, width=64, height=64,
                    seed=3))
            finally:
                await client.close()

        images = asyncio.run(run())
    finally:
        stop(worker)
    assert len(images) == 1 and images[0].startswith(b"\x89PNG")


def served(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["served"]


def test_front_end_routes_to_two_workers_and_declares_what_the_healthy_ones_bring(subnet, tmp_path):
    a, b, front = free_ports(3)
    (tmp_path / "miner.yml").write_text(
        "tasks:\n  chat-llama-3:\n    workers:\n"
        f"      - {{capacity: 30000, url: 'http://127.0.0.1:{a}', token_env: WTOKEN}}\n"
        f"      - {{capacity: 20000, url: 'http://127.0.0.1:{b}', token_env: WTOKEN}}\n")
    workers = {a: start_worker(a), b: start_worker(b)}
    miner = neuron("miner", ["--network", f"local:{subnet.local.folder}", "--wallet-path",
                             str(tmp_path / "wallets"), "--wallet-name", "miner", "--config",
                             str(tmp_path / "miner.yml"), "--host", "127.0.0.1", "--port",
                             str(front), "--min-stake", "0", "--health-interval", str(HEALTH_S),
                             "--state-dir", str(tmp_path / "state"),
                             "--period-blocks", str(10**6)],  # one period for the whole test
                   env={"WTOKEN": TOKEN},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    me = subnet.miner.hotkey.ss58_address

    def post(path: str, message) -> httpx.Response:
        body = message.model_dump_json().encode()
        headers = http_auth.sign(subnet.validator, method="POST", path=path, body=body,
                                 receiver_ss58=me)
        return httpx.post(f"http://127.0.0.1:{front}{path}", content=body, headers=headers,
                          timeout=60)

    def signed() -> float:
        """The period's declaration, signed once for the whole period."""
        reply = post("/capacity", CapacityRequest())
        return CapacityResponse.model_validate_json(reply.content).capacities.get("chat-llama-3", 0)

    def declared() -> float:
        """What the healthy workers bring now: the next period's declaration."""
        metrics = httpx.get(f"http://127.0.0.1:{front}/metrics").text
        line = next(x for x in metrics.splitlines()
                    if x.startswith('sn19_miner_declared_units{task="chat-llama-3"}'))
        return float(line.split()[-1])

    def chat(seed: int) -> ChatChunk:
        reply = post("/chat", chat_request(seed))
        assert reply.status_code == 200, reply.text
        return ChatChunk.model_validate_json(reply.text.strip().splitlines()[-1])

    def until(condition, within: float) -> float:
        began = time.monotonic()
        while not condition():
            assert time.monotonic() - began < within, "condition not met in time"
            time.sleep(0.1)
        return time.monotonic() - began

    try:
        wait_healthy(front, miner, time.monotonic() + 120)
        assert signed() == declared() == 50000
        with ThreadPoolExecutor(4) as pool:
            finals = list(pool.map(chat, range(8)))
        assert all(f.done and f.completion_tokens > 0 for f in finals)
        assert served(a) > 0 and served(b) > 0  # both workers got requests

        workers[a].kill()
        workers[a].wait()
        # a request may find the dead worker first: it is taken out and the request goes to b
        finals = [chat(seed) for seed in range(8, 12)]
        assert all(f.done for f in finals)
        until(lambda: declared() == 20000, within=HEALTH_S + 2)
        assert signed() == 50000  # a lost worker lowers the declaration from the next period

        workers[a] = start_worker(a)
        until(lambda: declared() == 50000, within=HEALTH_S + 2)
        before = served(a)
        with ThreadPoolExecutor(4) as pool:
            assert all(f.done for f in pool.map(chat, range(12, 20)))
        assert served(a) > before  # back in the rotation
        metrics = httpx.get(f"http://127.0.0.1:{front}/metrics").text
        assert 'sn19_miner_declared_units{task="chat-llama-3"} 50000.0' in metrics
        assert (
            f'sn19_miner_worker_up{{task="chat-llama-3",worker="http://127.0.0.1:{a}"}} 1.0'
            in metrics
        )
    finally:
        stop(miner, *workers.values())
