"""The neurons on the production chain path in real processes: bittensor's ``Client`` over the
local subnet's chain, with the chain's rules on. A neuron restarted within the serving rate limit
keeps serving; weights under commit-reveal, with a tempo twice the period, are committed,
revealed at their round and paid by Yuma; a uid re-registered during the period gets none."""

import asyncio
import signal
import subprocess
import time

import bittensor as bt
import pytest

from core.localchain import FolderSubstrate, LocalSubnet
from core.storage import open_store
from devtools.localproc import free_port, neuron, wait_for, wait_healthy

pytestmark = [pytest.mark.process, pytest.mark.slow]


def served_port(local: LocalSubnet, hotkey: str) -> int | None:
    n = local.ledger.state().by_hotkey(hotkey)
    return None if n is None or n.axon is None else n.axon.port


def test_neurons_restarted_within_the_serving_rate_limit_keep_serving(tmp_path, make_net):
    net = make_net(block_time=1.0, age_blocks=1000, serving_rate_limit=10_000)
    local, wallets = net.local, net.wallets
    miner = net.miner(coldkey=None)
    validator = net.validator(stake=100, coldkey=None)
    (tmp_path / "miner.yml").write_text("tasks:\n  chat-llama-3: {capacity: 7200}\n")
    common = ["--network", f"local:{local.folder}", "--wallet-path", str(wallets),
              "--log-level", "INFO"]

    def start_miner(port: int, log):
        return neuron("miner", [*common, "--config", str(tmp_path / "miner.yml"),
                                "--wallet-name", "miner", "--host", "127.0.0.1", "--port",
                                str(port), "--min-stake", "0", "--torch-threads", "1",
                                "--state-dir", str(tmp_path / "state")],
                      stdout=log, stderr=subprocess.STDOUT)

    def start_validator(port: int, log):
        return neuron("validator", [*common, "--wallet-name", "validator", "--db",
                                    str(tmp_path / "v.sqlite3"), "--check", "off",
                                    "--tokenizers", "tiny", "--host", "127.0.0.1", "--port",
                                    str(port)], stdout=log, stderr=subprocess.STDOUT)

    restarted_within_the_limit(local, start_miner, miner.hotkey.ss58_address,
                               tmp_path / "miner")
    restarted_within_the_limit(local, start_validator, validator.hotkey.ss58_address,
                               tmp_path / "validator")


def restarted_within_the_limit(local: LocalSubnet, start, hotkey: str, logs) -> None:
    """Start a neuron on a port and let it announce it; restart it at once on another (the
    chain refuses the new announcement: it serves on regardless, trying again later); restart
    it on the first (the chain holds it: nothing to announce)."""
    first, second = free_port(), free_port()

    def run(port: int, n: int, until, what: str) -> str:
        path = logs.with_name(f"{logs.name}-{n}.log")
        with open(path, "w") as log:
            proc = start(port, log)
            try:
                wait_healthy(port, proc, time.monotonic() + 180)
                wait_for(lambda: until(path.read_text()), 60, what)
                assert proc.poll() is None, path.read_text()[-2000:]
            finally:
                proc.terminate()  # a clean stop (uvicorn re-raises SIGTERM once it has stopped)
                assert proc.wait(timeout=60) in (0, -signal.SIGTERM), path.read_text()[-2000:]
        return path.read_text()

    run(first, 1, lambda _: served_port(local, hotkey) == first, "announced")
    text = run(second, 2, lambda log: "refused for now" in log, "the refusal logged")
    assert served_port(local, hotkey) == first and "Traceback" not in text
    run(first, 3, lambda log: "already holds" in log, "nothing to announce")


PERIOD = 60  # blocks of 0.5 s


def test_commit_reveal_with_a_tempo_of_two_periods_and_a_reregistered_uid(tmp_path, make_net):
    net = make_net(block_time=0.5, tempo=2 * PERIOD, age_blocks=100 * PERIOD, commit_reveal=True,
                   reveal_period_epochs=1, serving_rate_limit=50)
    local, wallets = net.local, net.wallets
    local.open_windows(PERIOD, 2)
    net.validator(stake=1000, coldkey=None)
    miners = [net.miner(f"miner{i}", coldkey=None) for i in range(2)]
    uids = [net.uids[f"miner{i}"] for i in range(2)]
    (tmp_path / "miner.yml").write_text("tasks:\n  chat-llama-3: {capacity: 7200}\n")
    common = ["--network", f"local:{local.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(PERIOD), "--log-level", "INFO"]
    procs = []
    try:
        for i in range(len(miners)):
            port = free_port()
            procs.append(neuron("miner", [*common, "--config", str(tmp_path / "miner.yml"),
                                          "--wallet-name", f"miner{i}", "--host", "127.0.0.1",
                                          "--port", str(port), "--min-stake", "0",
                                          "--torch-threads", "1", "--state-dir",
                                          str(tmp_path / "state")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_healthy(port, procs[-1], time.monotonic() + 180)
        # the validator's first period begins after the miners announced (its contenders are
        # the metagraph's at the period's start block)
        ledger = local.ledger
        start = (ledger.head() // PERIOD + 1) * PERIOD
        wait_for(lambda: ledger.head() >= start, 60, "the next period")
        db = str(tmp_path / "v.sqlite3")
        log_path = tmp_path / "validator.log"
        with open(log_path, "w") as log:
            v = neuron("validator", [*common, "--wallet-name", "validator", "--db", db,
                                     "--port", "0", "--periods", "1", "--check", "off",
                                     "--tokenizers", "tiny"], stdout=log,
                       stderr=subprocess.STDOUT)
            procs.append(v)

            def period_opened():
                store = open_store(db)
                try:
                    return store.latest_period()
                finally:
                    store.close()

            wait_for(period_opened, 120, "the validator's period opened")
            # the second miner's uid is taken by a newcomer while the period runs
            newcomer = net.wallet("newcomer")
            local.register(newcomer.hotkey.ss58_address, uid=uids[1])
            assert v.wait(timeout=240) == 0, log_path.read_text()[-3000:]
        text = log_path.read_text()
        assert "weights committed" in text and f"uid {uids[1]} was re-registered" in text
        [commit] = [c for c in local.ledger.events() if c["op"] == "commit"]
        assert str(uids[1]) not in commit["weights"] and str(uids[0]) in commit["weights"]
        # revealed at its round, then paid by the epoch after it
        wait_for(lambda: ledger.head() >= commit["reveal_block"], 200, "the reveal")
        [entry] = local.weights_log()
        assert entry["committed_at"] == commit["block"]
        paid = ledger.last_epoch(commit["reveal_block"]) + 2 * PERIOD + 1
        wait_for(lambda: ledger.head() >= paid, 200, "the epoch after the reveal")

        async def metagraph():
            async with bt.Client("local", substrate=FolderSubstrate(local.folder)) as client:
                return await client.subnets.metagraph(local.netuid, commitments=False)

        graph = asyncio.run(metagraph())
        assert graph.neurons[uids[0]].incentive > 0.99
        assert graph.neurons[uids[1]].incentive == 0.0
        assert graph.neurons[uids[1]].hotkey == newcomer.hotkey.ss58_address
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(timeout=60)
