"""The miner as its own process: SIGTERM lets in-flight requests finish before it stops."""

import signal
import subprocess
import time

import httpx
import pytest
from bittensor import http_auth

from core.protocol import ChatChunk, ChatRequest
from devtools.localproc import free_port, neuron, wait_healthy

pytestmark = [pytest.mark.process]


def test_sigterm_finishes_in_flight_requests(subnet, tmp_path):
    (tmp_path / "miner.yml").write_text("tasks:\n  chat-llama-3: {capacity: 100000}\n")
    port = free_port()
    miner = neuron("miner", ["--network", f"local:{subnet.local.folder}", "--wallet-path",
                             str(tmp_path / "wallets"), "--wallet-name", "miner", "--config",
                             str(tmp_path / "miner.yml"), "--host", "127.0.0.1", "--port",
                             str(port), "--min-stake", "0", "--torch-threads", "1",
                             "--state-dir", str(tmp_path / "state")],
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(port, miner, time.monotonic() + 120)
        me = subnet.miner.hotkey.ss58_address
        body = ChatRequest(task="chat-llama-3", messages=[{"role": "user", "content": "go"}],
                           max_tokens=3000, seed=1).model_dump_json().encode()
        headers = http_auth.sign(subnet.validator, method="POST", path="/chat", body=body,
                                 receiver_ss58=me)
        lines = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/chat", content=body,
                          headers=headers, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(ChatChunk.model_validate_json(line))
                if len(lines) == 5:
                    miner.send_signal(signal.SIGTERM)
        assert r.status_code == 200
        tokens = sum(len(chunk.tokens) for chunk in lines)
        assert lines[-1].done and lines[-1].completion_tokens == tokens > 5
        # uvicorn stops gracefully, then re-raises the captured SIGTERM: the conventional status
        assert miner.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in miner.stdout.read()
    finally:
        if miner.poll() is None:
            miner.kill()
