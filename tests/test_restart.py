"""A validator killed (SIGKILL) in an audit window, restarted: every recorded request, the
period's budgets and the window are still there, the period resumes where it stopped, and what it
spent is exactly what its records say. Its peers are answered at once: its report of the window
is served to another validator before the period ends, not only from its close on."""

import subprocess
import time
import urllib.error
import urllib.request

import pytest
from bittensor import http_auth

from core.storage import open_store
from core.window_report import REPORT_PATH, ReportRequest
from devtools.localproc import free_port, neuron, wait_for, wait_healthy

pytestmark = [pytest.mark.process, pytest.mark.slow]

PERIOD = 120  # blocks of 1 s: windows of 10 blocks, the period's in its third quarter


def report_served(port: int, asker, validator: str, block: int) -> bool:
    """Whether the validator's peer endpoint answers ``asker``'s signed request for its report
    of the window at ``block`` with the report."""
    body = ReportRequest(block=block).model_dump_json().encode()
    headers = {**http_auth.sign(asker, method="POST", path=REPORT_PATH, body=body,
                                receiver_ss58=validator), "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{REPORT_PATH}", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.HTTPError, OSError):  # 404 until it holds one, 503 unsynced, down
        return False


def test_killed_validator_resumes_its_period_with_nothing_lost(tmp_path, make_net):
    net = make_net("wallets", block_time=1.0, tempo=PERIOD, age_blocks=100 * PERIOD)
    chain, wallets = net.local, net.wallets
    # an audit window in each period the validator may run, ending 30 blocks before the period
    chain.open_windows(PERIOD, 1, end_margin=30)
    validator = net.validator(stake=1000)
    peer = net.validator("peer", stake=1).hotkey  # another validator, asking for reports
    port = free_port()
    miner = net.miner(endpoint=f"http://127.0.0.1:{port}")
    (tmp_path / "miner.yml").write_text("tasks:\n  chat-llama-3: {capacity: 7200}\n")
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(PERIOD), "--log-level", "INFO"]
    db = str(tmp_path / "v.sqlite3")
    # a window asks 7200 x 10/120 = 600 tokens (2 requests); the background 25% (6 requests)
    vargs = [*common, "--wallet-name", "validator", "--db", db, "--port", "0", "--periods", "1",
             "--check", "cpu", "--background", "0.25"]
    procs = [neuron("miner", [*common, "--config", str(tmp_path / "miner.yml"), "--wallet-name",
                              "miner", "--host", "127.0.0.1", "--port", str(port),
                              "--min-stake", "0", "--torch-threads", "1",
                              "--state-dir", str(tmp_path / "state")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_healthy(port, procs[0], time.monotonic() + 120)
        first = neuron("validator", vargs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(first)

        def a_window_request_recorded():
            store = open_store(db)
            try:
                period = store.latest_period()
                windows = store.windows(period) if period is not None else []
                return period if windows and any(
                    windows[0].slice_of(r.at) is not None for r in store.records(period)) else None
            finally:
                store.close()

        period = wait_for(a_window_request_recorded, 150, "a request of the window recorded")
        first.kill()
        first.wait()
        store = open_store(db)
        before, contenders = store.records(period), store.contenders(period)
        (window,) = store.windows(period)
        store.close()
        assert not open_store(db).period(period).finished

        # restarted once the window is over: its report is made from what was recorded in it
        wait_for(lambda: chain.ledger.head() >= window.block + PERIOD // 12, 60, "the window over")
        log = tmp_path / "second.log"
        peer_port = free_port()
        with open(log, "w") as out:
            second = neuron("validator", [*vargs[:vargs.index("--port") + 1], str(peer_port),
                                          *vargs[vargs.index("--port") + 2:], "--host",
                                          "127.0.0.1", "--no-announce"],
                            stdout=out, stderr=subprocess.STDOUT)
            procs.append(second)
            served_at = wait_for(lambda: (report_served(peer_port, peer,
                                                        validator.hotkey.ss58_address,
                                                        window.block)
                                          and chain.ledger.head()) or second.poll() is not None,
                                 120, "the restarted validator serving its window report")
            assert served_at is not True, "it ended before serving its report"
            assert served_at < (period + 1) * PERIOD, "served only from the period's close on"
            assert second.wait(timeout=120) == 0
        after = open_store(db)
        assert after.period(period).finished
        assert after.contenders(period) == contenders  # the same budgets, not asked again
        assert after.windows(period) == [window]  # the window keeps its first start
        records = after.records(period)
        assert records[:len(before)] == before  # nothing recorded was lost
        assert len(records) > len(before) and "(resumed)" in log.read_text()
        assert sum(r.units for r in records) <= contenders[0].budget
        # what the kill left reserved but never recorded is not counted as spent
        (_, used), = after.spent(period).values()
        assert used == sum(r.units for r in records)
        state = after.states()[(miner.hotkey.ss58_address, "chat-llama-3")]
        assert len(state.demonstrated_w) == 1 and state.credited > 0
        assert chain.weights_log(), "weights were set after the resumed period"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
