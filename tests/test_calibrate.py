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
    # at least 5 requests at that rate: on a loaded machine the proposal, and so the rate, is
    # lower, and the window lasts longer
    n = max(5, round(rate * seconds))
    seconds = n / rate
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


class _Pipeline:
    """A diffusers pipeline's calling convention: ``callback_on_step_end`` after each step."""

    def __init__(self, step_s: float):
        self.step_s = step_s

    def __call__(self, *, num_inference_steps, callback_on_step_end=None, **_):
        for i in range(num_inference_steps):
            time.sleep(self.step_s)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, i, {})
        return ["an image"]


class _Engine:
    def __init__(self, step_s: float):
        self.pipeline = _Pipeline(step_s)

    def answer(self, request):
        return self.pipeline(num_inference_steps=request.steps, callback_on_step_end=None)

    generate = answer


def test_progress_shows_the_denoising_step_of_an_image_still_running():
    """A step of the ladder shorter than one image still says how far that image is."""
    from core.miner import calibrate as calibration
    from core.miner.pool import LocalWorker, Pool

    task = "proteus-text-to-image"
    steps = TASKS[task].units_per_synthetic
    pool = Pool(task, [LocalWorker("local", 40, 1, _Engine(step_s=0.05))])
    lines: list[str] = []
    step, stopped = asyncio.run(calibration.measure(
        pool, task, 1, 0.01, 64, calibration.random.Random(0), tick_s=0.02,
        progress=lines.append))
    assert not stopped and step.requests == 1 and step.concurrency == 1
    shown = [line for line in lines if "in flight: image step" in line]
    assert shown, lines
    # the steps shown are the image's own, counted up to its number of steps
    counted = [int(line.split("image step ")[1].split("/")[0]) for line in shown]
    assert counted == sorted(counted) and counted[0] >= 1 and counted[-1] <= steps
    assert all(f"/{steps}" in line for line in shown)


def test_sigterm_writes_what_was_measured_and_the_period_follows_the_block_time(tmp_path):
    """Stopped in its second task, calibration leaves a whole YAML: the first task's proposal
    (per period of --period-blocks x --block-time), the cut one marked, the file PARTIAL."""
    import queue
    import signal
    import threading

    config, proposal = tmp_path / "miner.yml", tmp_path / "proposed.yml"
    config.write_text("tasks:\n  chat-llama-3: {capacity: 1000}\n"
                      "  proteus-text-to-image: {capacity: 40}\n")
    calibrating = subprocess.Popen(
        [sys.executable, "neurons/miner.py", "calibrate", "--config", str(config),
         "--calibrate-seconds", "12", "--torch-threads", "1", "--period-blocks", "10",
         "--block-time", "2", "--calibrate-out", str(proposal)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    stderr = calibrating.stderr
    assert stderr is not None

    def read() -> None:
        for line in stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        while not seen or not seen[-1].startswith("proteus-text-to-image: requests of 64x64"):
            seen.append(lines.get(timeout=300))  # the image task began: the chat one is written
        assert "PARTIAL: the calibration is still running" in proposal.read_text()
        calibrating.send_signal(signal.SIGTERM)
        out, _ = calibrating.communicate(timeout=300)
    finally:
        calibrating.kill()
    assert calibrating.returncode == 1, out
    assert any(line.startswith("    chat-llama-3: 1 at once: ") and " answered, " in line
               for line in seen), seen  # progress within the step
    assert "a period is 10 blocks x 2 s = 20 s" in seen[0]
    text = proposal.read_text()
    assert "# PARTIAL: stopped by SIGTERM; measured: chat-llama-3; cut short" in text
    assert "per period of 20 s" in text
    chat = next(line for line in out.splitlines() if line.startswith("chat-llama-3: served"))
    rate = float(chat.split("served ")[1].split()[0])
    proposed = load_config(proposal).tasks["chat-llama-3"].capacity
    assert proposed == pytest.approx(rate * 20 * 0.8, abs=0.05 * 20 * 0.8 + 0.5)
    assert "stopped by SIGTERM" in out and "wrote" in out and "(PARTIAL)" in out
