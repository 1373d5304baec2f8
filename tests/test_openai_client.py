"""The official openai client against a running local subnet: miners and a validator with its
API, each its own process on 127.0.0.1."""

import base64
import json
import subprocess
import time

import httpx
import openai
import pytest

from core.storage import open_store
from core.validator import keys
from devtools.localproc import free_ports, lone_validator, neuron, wait_healthy

pytestmark = [pytest.mark.process, pytest.mark.slow]

PERIOD = 30


def test_openai_client_streams_chat_and_generates_images(tmp_path, make_net):
    net = make_net("wallets", block_time=1.0, tempo=PERIOD, age_blocks=100 * PERIOD)
    chain, wallets = net.local, net.wallets
    net.validator(stake=1000)
    (tmp_path / "miner.yml").write_text(
        # what these CPU miners can serve in a period, at its full rate in an audit window
        "tasks:\n  chat-llama-3: {capacity: 3000}\n  proteus-text-to-image: {capacity: 60}\n")
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(PERIOD), "--log-level", "WARNING"]
    db = str(tmp_path / "v.sqlite3")
    store = open_store(db)
    key = keys.create(store, "tester", per_minute=100)
    store.close()
    *miner_ports, api_port = free_ports(3)
    procs = []
    try:
        for i, port in enumerate(miner_ports):
            net.miner(f"miner{i}", endpoint=f"http://127.0.0.1:{port}")
            procs.append(neuron("miner", [*common, "--config", str(tmp_path / "miner.yml"),
                                          "--wallet-name", f"miner{i}", "--host", "127.0.0.1",
                                          "--port", str(port), "--min-stake", "0",
                                          "--torch-threads", "1", "--sync-interval", "2",
                                          "--state-dir", str(tmp_path / "state")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, proc in zip(miner_ports, procs):
            wait_healthy(port, proc, time.monotonic() + 120)
        log = tmp_path / "validator.log"
        procs.append(lone_validator(
            common, "validator", db, "--check", "cpu", "--image-size", "64", "--periods", "3",
            "--api-port", str(api_port), "--api-host", "127.0.0.1", "--log-level", "DEBUG",
            stdout=open(log, "w"), stderr=subprocess.STDOUT))
        api = f"http://127.0.0.1:{api_port}/v1"

        def chat_capacity() -> float:
            try:
                r = httpx.get(f"{api}/models", headers={"Authorization": f"Bearer {key}"})
                return next(m["remaining"] for m in r.json()["data"] if m["id"] == "chat-llama-3")
            except (httpx.HTTPError, KeyError, ValueError):
                return 0.0

        deadline = time.monotonic() + 90  # the validator plans its first full period
        while chat_capacity() <= 0:
            assert time.monotonic() < deadline, "the validator's API never showed capacity"
            time.sleep(0.5)

        client = openai.OpenAI(base_url=api, api_key=key, max_retries=0)
        stream = client.chat.completions.create(
            model="chat-llama-3", messages=[{"role": "user", "content": "Say something"}],
            max_tokens=40, temperature=0.7, seed=3, stream=True,
            stream_options={"include_usage": True})
        pieces, finish, usage = [], None, None
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert "".join(pieces) and finish in ("stop", "length")
        assert usage.completion_tokens <= 40 and usage.prompt_tokens > 0

        whole = client.chat.completions.create(
            model="chat-llama-3", messages=[{"role": "user", "content": "Say something"}],
            max_tokens=40, temperature=0.7, seed=3)
        assert whole.choices[0].message.content == "".join(pieces)  # same seed, same model

        image = client.images.generate(model="proteus-text-to-image", prompt="a lighthouse",
                                       size="64x64", response_format="b64_json",
                                       extra_body={"steps": 4})
        assert base64.b64decode(image.data[0].b64_json).startswith(b"\x89PNG")

        try:
            openai.OpenAI(base_url=api, api_key="sn19-wrong", max_retries=0).models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError:
            pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    # nothing secret in the validator's logs, even at DEBUG: not the API key, not the hotkey
    logged = log.read_text()
    hotkey = json.loads((wallets / "validator/hotkeys/default").read_text())
    secrets = [key, key[len("sn19-"):]] + [hotkey[f] for f in ("privateKey", "secretPhrase",
                                                                "secretSeed")]
    assert "DEBUG" in logged and not any(s in logged for s in secrets)
    records = open_store(db)
    latest = records.latest_period()
    served = [r for p in range(latest - 3, latest + 1) for r in records.records(p) if r.organic]
    assert len(served) >= 3 and all(r.outcome.value == "ok" for r in served)
