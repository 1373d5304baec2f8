"""Calibration proposes what the setup serves at the tasks' expected speed: a real miner
declaring the proposal, sent its full declared rate as in an audit window, answers every
request within the expected time (the speed factor stays 1)."""

import asyncio
import json
import subprocess
import sys
import time

import pytest
import yaml

from core.miner.config import load_config
from core.protocol import ChatRequest
from core.tasks import TASKS
from core.transport.client import SignedClient
from devtools.localproc import ROOT, free_port, neuron, wait_healthy

pytestmark = [pytest.mark.process, pytest.mark.slow]
PERIOD_BLOCKS = 10  # a 2-minute period: the tiny engine's figure stays under the task's cap


def test_the_proposed_capacity_served_at_its_full_rate_keeps_the_speed_factor_at_1(
        subnet, tmp_path):
    config, proposal = tmp_path / "miner.yml", tmp_path / "proposed.yml"
    config.write_text("tasks:\n  chat-llama-3: {capacity: 1000}\n")
    run = subprocess.run([sys.executable, "neurons/miner.py", "--config", str(config),
                          "--calibrate", "--calibrate-seconds", "4", "--torch-threads", "1",
                          "--period-blocks", str(PERIOD_BLOCKS), "--calibrate-out",
                          str(proposal)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "[#" in run.stderr and "chat-llama-3: 1 at once" in run.stderr  # progress shown
    proposed = load_config(proposal).tasks["chat-llama-3"].capacity
    assert proposed is not None and 0 < proposed < TASKS["chat-llama-3"].max_capacity
    assert yaml.safe_load(proposal.read_text())["tasks"]["chat-llama-3"]["capacity"] == proposed

    port = free_port()
    miner = neuron("miner", ["--network", f"local:{subnet.local.folder}", "--wallet-path",
                             str(tmp_path / "wallets"), "--wallet-name", "miner", "--config",
                             str(proposal), "--host", "127.0.0.1", "--port", str(port),
                             "--min-stake", "0", "--torch-threads", "1", "--period-blocks",
                             str(PERIOD_BLOCKS), "--state-dir", str(tmp_path / "state")],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, miner, time.monotonic() + 120)
        latencies = asyncio.run(window(port, subnet, proposed, seconds=10.0))
    finally:
        miner.kill()
    task = TASKS["chat-llama-3"]
    assert len(latencies) >= 5 and all(ok for ok, _ in latencies)
    # every answer within the task's expected time for its units: speed factor 1
    assert all(seconds <= task.expected_seconds(units) for _, (seconds, units) in latencies)


async def window(port, subnet, proposed, seconds):
    """The declared rate (proposed units per period) for ``seconds``, evenly, in requests of the
    task's synthetic size, as a validator of all the stake sends it in a window."""
    from core.metagraph import Neuron

    task = TASKS["chat-llama-3"]
    rate = proposed / (PERIOD_BLOCKS * 12.0) / task.units_per_synthetic  # requests per second
    n = max(1, round(rate * seconds))
    me = subnet.miner.hotkey.ss58_address
    target = Neuron(1, me, "c", 0.0, False, f"http://127.0.0.1:{port}", 0)
    client = SignedClient(subnet.validator)

    async def one(i):
        await asyncio.sleep(i * seconds / n)
        request = ChatRequest(task="chat-llama-3", seed=i, max_tokens=236,
                              messages=[{"role": "user", "content": f"question {i}"}])
        began = time.monotonic()
        done = None
        async for status, line in client.stream(target.endpoint, "/chat", me, request, 60,
                                                2**20):
            if status != 200:
                return False, (time.monotonic() - began, 0)
            done = line
        final = json.loads(done)
        return True, (time.monotonic() - began, final["prompt_tokens"] + final["completion_tokens"])

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()
