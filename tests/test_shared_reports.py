"""Three validators of 45%, 35% and 20% of the stake, two honest miners, a stake-first miner (it
declares twice what its honest twin does and serves only the largest validator, refusing the
others 429) and a dodger (the same, refusing the others 403 after admitting their capacity
calls), all real processes on a local subnet (docs/protocol.md §6, §9).

With window reports shared, the three weight vectors agree and neither the stake-first miner nor
the dodger earns more than its twin; with sharing switched off (--no-share-reports) the largest
validator pays the stake-first miner for capacity the others were refused, and the vectors
disagree: shown, not hidden.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from core.localchain import LocalSubnet
from core.storage import open_store
from devtools.localproc import ROOT, free_ports, make_wallet, neuron, wait_healthy

pytestmark = [pytest.mark.process, pytest.mark.slow]

PB, BLOCK_S = 60, 1.0
CHAT = "chat-llama-3"
DECLARED = 2400.0  # tokens a period: the honest miners'; the stake-first one declares twice it
VALIDATORS = {"v45": 4500.0, "v35": 3500.0, "v20": 2000.0}
MINERS = ("honest", "twin", "stake-first", "dodger")
HOSTILE = ("stake-first", "dodger")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_validators(chain: LocalSubnet, common: list[str], tmp_path, label: str,
                   extra: list[str]) -> dict[str, str]:
    """One period of the three validators; their databases by name."""
    ports = free_ports(len(VALIDATORS))
    procs, dbs = {}, {}
    for (name, _), port in zip(VALIDATORS.items(), ports):
        dbs[name] = str(tmp_path / f"{name}-{label}.sqlite3")
        procs[name] = neuron("validator", [
            *common, "--wallet-name", name, "--db", dbs[name], "--periods", "1",
            "--host", "127.0.0.1", "--port", str(port), "--check", "off", "--tokenizers", "tiny",
            "--capacity-timeout", "5", "--background", "0.2", *extra],
            stdout=open(tmp_path / f"{name}-{label}.log", "w"), stderr=subprocess.STDOUT)
    try:
        for name, proc in procs.items():
            assert proc.wait(timeout=4 * PB * BLOCK_S) == 0, \
                (tmp_path / f"{name}-{label}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            proc.kill()
    return dbs


def vectors(chain: LocalSubnet, hotkeys: dict[str, str], uids: dict[str, int],
            since: int) -> dict[str, np.ndarray]:
    """Each validator's last weights over the miners' uids, set after weights_log entry
    ``since``."""
    out = {}
    for entry in chain.weights_log()[since:]:
        name = hotkeys[entry["hotkey"]]
        out[name] = np.array([entry["weights"].get(str(uids[m]), 0.0) for m in MINERS], float)
    assert set(out) == set(VALIDATORS), out
    return {name: v / v.sum() for name, v in out.items()}


@pytest.mark.timeout(900)
def test_shared_reports_make_validators_agree_on_a_stake_first_miner(tmp_path):
    chain = LocalSubnet.create(tmp_path / "chain", block_time=BLOCK_S, tempo=PB,
                              age_blocks=25 * PB)
    wallets = tmp_path / "wallets"
    hotkeys, uids = {}, {}
    for name, stake in VALIDATORS.items():
        w = make_wallet(wallets, name)
        hotkeys[w.hotkey.ss58_address] = name
        chain.register(w.hotkey.ss58_address, w.coldkeypub.ss58_address, stake=stake,
                       validator_permit=True, registered_at=0)
    largest = next(k for k, n in hotkeys.items() if n == "v45")
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(PB), "--log-level", "INFO"]
    ports = dict(zip(MINERS, free_ports(len(MINERS))))
    procs = {}
    try:
        for name in MINERS:
            w = make_wallet(wallets, name)
            uids[name] = chain.register(w.hotkey.ss58_address, w.coldkeypub.ss58_address,
                                        registered_at=0,
                                        endpoint=f"http://127.0.0.1:{ports[name]}")
            config = tmp_path / f"{name}.yml"
            declared = 2 * DECLARED if name in HOSTILE else DECLARED
            config.write_text(f"tasks:\n  {CHAT}: {{capacity: {declared}}}\n")
            argv = [*common, "--config", str(config), "--wallet-name", name, "--host",
                    "127.0.0.1", "--port", str(ports[name]), "--min-stake", "0",
                    "--torch-threads", "1", "--sync-interval", "2", "--state-dir",
                    str(tmp_path / "state")]
            log = open(tmp_path / f"{name}.log", "w")
            if name in HOSTILE:
                procs[name] = subprocess.Popen(
                    [sys.executable, str(ROOT / "tests/hostile_miner.py"), *argv],
                    env={**os.environ, "SN19_HOSTILE": name, "SN19_FAVOURITE": largest,
                         "PYTHONUNBUFFERED": "1"},
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            else:
                procs[name] = neuron("miner", argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        for name in MINERS:
            wait_healthy(ports[name], procs[name], deadline)
        chain.open_windows(PB, 6)  # an audit window in every period either run can land in

        shared = run_validators(chain, common, tmp_path, "shared", [])
        with_sharing = vectors(chain, hotkeys, uids, 0)
        since = len(chain.weights_log())
        run_validators(chain, common, tmp_path, "alone", ["--no-share-reports"])
        alone = vectors(chain, hotkeys, uids, since)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()

    names = list(VALIDATORS)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    agree = {pair: cosine(with_sharing[pair[0]], with_sharing[pair[1]]) for pair in pairs}
    apart = {pair: cosine(alone[pair[0]], alone[pair[1]]) for pair in pairs}
    print("shared:", {n: v.round(3).tolist() for n, v in with_sharing.items()}, agree)
    print("alone:", {n: v.round(3).tolist() for n, v in alone.items()}, apart)

    # shared: every window was pooled from all three reports, and the validators agree
    for name, db in shared.items():
        store = open_store(db)
        period = store.latest_period()
        poolings = store.poolings(period)
        assert poolings and all(p.coverage == 1.0 and len(p.used) == 3
                                for p in poolings.values()), (name, poolings)
        store.close()
    assert min(agree.values()) > 0.99, agree
    stake_first, twin = MINERS.index("stake-first"), MINERS.index("twin")
    dodger = MINERS.index("dodger")
    for name, v in with_sharing.items():
        assert v[MINERS.index("honest")] > 0 and v[twin] > 0, (name, v)
        assert v[stake_first] <= v[twin], (name, v)
        assert v[dodger] <= v[twin], (name, v)  # a 403 is a failure, never out of the count

    # alone: the largest validator pays the stake-first miner more than its twin; the others
    # do not, and the vectors disagree
    assert alone["v45"][stake_first] > alone["v45"][twin], alone
    assert alone["v20"][stake_first] <= alone["v20"][twin], alone
    assert alone["v20"][dodger] <= alone["v20"][twin], alone  # its own view: refused, failed
    assert min(apart.values()) < 0.99, apart
