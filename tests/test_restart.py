"""A validator killed (SIGKILL) in the middle of a period, restarted: every recorded request and
the period's plan are still there, the period resumes where it stopped, and what it spent is
exactly what its records say."""

import asyncio
import subprocess
import time

from core.chain.local import LocalChain
from core.localproc import free_port, make_wallet, neuron, wait_healthy
from core.storage import open_store

PERIOD = 30


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_validator_resumes_its_period_with_nothing_lost(tmp_path):
    chain = LocalChain.create(tmp_path / "chain", block_time=1.0, tempo=PERIOD,
                              age_blocks=100 * PERIOD)
    wallets = tmp_path / "wallets"
    validator, miner = make_wallet(wallets, "validator"), make_wallet(wallets, "miner")
    chain.register(validator.hotkey.ss58_address, "c", stake=1000, validator_permit=True, registered_at=0)
    chain.register(miner.hotkey.ss58_address, "c", registered_at=0)
    (tmp_path / "miner.yml").write_text("tasks:\n  chat-llama-3: {capacity: 3000}\n")
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(PERIOD), "--log-level", "INFO"]
    port = free_port()
    db = str(tmp_path / "v.sqlite3")
    vargs = [*common, "--wallet-name", "validator", "--db", db, "--periods", "1", "--check", "cpu"]
    procs = [neuron("miner", [*common, "--config", str(tmp_path / "miner.yml"), "--wallet-name",
                              "miner", "--host", "127.0.0.1", "--port", str(port),
                              "--min-stake", "0", "--torch-threads", "1",
                              "--state-dir", str(tmp_path / "state")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_healthy(port, procs[0], time.monotonic() + 120)
        first = neuron("validator", vargs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(first)

        def two_records_with_time_left():
            store = open_store(db)
            try:
                period = store.latest_period()
                block = asyncio.run(chain.block())
                left = (period + 1) * PERIOD - block if period is not None else 0
                return period if period is not None and len(store.records(period)) >= 2 \
                    and left >= 10 else None
            finally:
                store.close()

        period = wait_for(two_records_with_time_left, 90, "two requests recorded")
        first.kill()
        first.wait()
        store = open_store(db)
        before, plan = store.records(period), store.targets(period)
        store.close()
        assert not open_store(db).period(period)["finished"]

        log = tmp_path / "second.log"
        with open(log, "w") as out:
            second = neuron("validator", vargs, stdout=out, stderr=subprocess.STDOUT)
            procs.append(second)
            assert second.wait(timeout=120) == 0
        after = open_store(db)
        assert after.period(period)["finished"]
        assert after.targets(period) == plan  # the same plan, not a new draw
        records = after.records(period)
        assert records[:len(before)] == before  # nothing recorded was lost
        assert len(records) > len(before) and "(resumed)" in log.read_text()
        target = plan[0]
        assert target.audit and sum(r.units for r in records) <= target.contender.budget
        # what the kill left reserved but never recorded is not counted as spent
        (_, used), = after.spent(period).values()
        assert used == sum(r.units for r in records)
        state = after.states()[(miner.hotkey.ss58_address, "chat-llama-3")]
        assert state.audited and state.credited > 0.8 * 3000 * 0.8
        assert chain.weights_log(), "weights were set after the resumed period"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
