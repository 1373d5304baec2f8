"""API clients that drop their chat streams after the first event, against a real validator and
miner on 127.0.0.1: every one of them leaves exactly one record, and what each period's budgets
spent is exactly what its records say (nothing reserved and forgotten)."""

from __future__ import annotations

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from core.storage import open_store
from core.validator import keys
from devtools.localproc import free_ports, lone_validator, neuron, wait_healthy

pytestmark = [pytest.mark.process, pytest.mark.slow]

PERIOD = 30
CLIENTS = 100


def test_dropped_streams_leave_one_record_each_and_the_budget_as_recorded(tmp_path, make_net):
    net = make_net("wallets", block_time=1.0, tempo=PERIOD, age_blocks=100 * PERIOD)
    chain, wallets = net.local, net.wallets
    net.validator(stake=1000)
    miner_port, api_port = free_ports(2)
    net.miner(endpoint=f"http://127.0.0.1:{miner_port}")
    (tmp_path / "miner.yml").write_text(
        "tasks:\n  chat-llama-3: {capacity: 100000, group: cpu}\ngroups:\n  cpu: {concurrency: 4}\n"
    )
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(PERIOD), "--log-level", "WARNING"]
    db = str(tmp_path / "v.sqlite3")
    store = open_store(db)
    key = keys.create(store, "dropper", per_minute=1000)
    store.close()
    procs = [neuron("miner", [*common, "--config", str(tmp_path / "miner.yml"), "--wallet-name",
                              "miner", "--host", "127.0.0.1", "--port", str(miner_port),
                              "--min-stake", "0", "--torch-threads", "1", "--sync-interval", "2",
                              "--state-dir", str(tmp_path / "state")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    api = f"http://127.0.0.1:{api_port}/v1"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        wait_healthy(miner_port, procs[0], time.monotonic() + 120)
        procs.append(lone_validator(
            common, "validator", db, "--check", "off", "--tokenizers", "tiny", "--periods", "4",
            "--api-port", str(api_port), "--api-host", "127.0.0.1",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 90
        while True:  # until the validator has planned a period
            try:
                models = httpx.get(f"{api}/models", headers=auth, timeout=5).json()["data"]
                if next(m["remaining"] for m in models if m["id"] == "chat-llama-3") > 0:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline, "the validator's API never showed capacity"
            time.sleep(0.5)

        def drop(i: int) -> tuple[int, bool]:
            # many tokens asked (a long deadline, however busy the miner), few read
            body = {"model": "chat-llama-3", "stream": True, "max_tokens": 400, "seed": i,
                    "messages": [{"role": "user", "content": f"tell me about {i}"}]}
            with httpx.stream("POST", f"{api}/chat/completions", json=body, headers=auth,
                              timeout=60) as r:
                for line in r.iter_lines():  # the first event, then the client goes away
                    return r.status_code, line.startswith("data: ")
            return r.status_code, False

        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(drop, range(CLIENTS)))
        # each client got its first event and left, or (a miner too busy on a loaded machine)
        # an error; either way one attempt, one record
        assert all(a == (200, True) or a[0] in (502, 503) for a in answers), answers
        assert (200, True) in answers  # streams were dropped (here: all of them, unloaded)
        time.sleep(5)  # the API notices each departure and records it
        procs[1].send_signal(signal.SIGTERM)  # a clean stop: its requests in flight recorded
        procs[1].wait(timeout=60)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    store = open_store(db)
    periods = [p for (p,) in store.db.execute("SELECT period FROM periods")]
    organic = [r for p in periods for r in store.records(p) if r.organic]
    assert len(organic) == CLIENTS  # one record each, whatever the client did
    for period in periods:
        records = store.records(period)
        for (hotkey, task), (_, used) in store.spent(period).items():
            assert used == sum(r.units for r in records if (r.hotkey, r.task) == (hotkey, task))
