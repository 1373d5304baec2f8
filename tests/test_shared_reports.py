"""Three validators of 45%, 35% and 20% of the stake, two honest miners, a stake-first miner (it
declares twice what its honest twin does and serves only the largest validator, refusing the
others 429) and a dodger (the same, refusing the others 403 after admitting their capacity
calls), all real processes on a local subnet (docs/protocol.md §6, §9).

With window reports shared, the three weight vectors agree and neither the stake-first miner nor
the dodger earns more than its twin; with sharing switched off (--no-share-reports) the largest
validator pays the stake-first miner for capacity the others were refused, and the vectors
disagree: shown, not hidden.

Beside them an equivocator signs the largest validator twice its twin's declaration and the others
its twin's (§4): the reports carry both, so every validator holds the proof and pays it nothing.
A stake-first miner declaring 1.7x serves the 45% and 20% validators and refuses the 35% one; the
20% validator colludes (tests/colluding_validator.py), its reports claiming full service for a
miner that refuses the others 403: neither earns more than the honest twin.
The miners run once for the module; each run of the validators is one period.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.localchain import LocalSubnet
from core.storage import open_store
from core.validator.measure import declared_in
from devtools.localproc import ROOT, free_ports, neuron, wait_healthy
from tests.chains import OWN, new_net

pytestmark = [pytest.mark.process, pytest.mark.slow]

PB, BLOCK_S = 60, 1.0
CHAT = "chat-llama-3"
DECLARED = 2400.0  # tokens a period: the honest miners'; the stake-first one declares twice it
VALIDATORS = {"v45": 4500.0, "v35": 3500.0, "v20": 2000.0}
MINERS = ("honest", "twin", "stake-first", "dodger", "equivocator", "stake-first-1.7", "colluded")
HOSTILE = {"stake-first": "stake-first", "dodger": "dodger", "equivocator": "equivocate",
           "stake-first-1.7": "stake-first", "colluded": "dodger"}
# what each hostile miner declares, x the honest twin's, and the validators it serves
DECLARES = {"stake-first": 2.0, "dodger": 2.0, "equivocator": 2.0, "stake-first-1.7": 1.7,
            "colluded": 1.0}
SERVES = {"stake-first-1.7": ("v45", "v20"), "colluded": ("v20",)}  # else the largest alone
COLLUDER = "v20"  # fabricates full service for "colluded" in its window reports


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_validators(chain: LocalSubnet, common: list[str], tmp_path, label: str,
                   extra: list[str], colluding_with: str) -> dict[str, str]:
    """One period of the three validators, COLLUDER fabricating its reports of the miner
    ``colluding_with`` (tests/colluding_validator.py); their databases by name."""
    ports = free_ports(len(VALIDATORS))
    procs, dbs = {}, {}
    for (name, _), port in zip(VALIDATORS.items(), ports):
        dbs[name] = str(tmp_path / f"{name}-{label}.sqlite3")
        argv = [*common, "--wallet-name", name, "--db", dbs[name], "--periods", "1",
                "--host", "127.0.0.1", "--port", str(port), "--check", "off", "--tokenizers",
                "tiny", "--capacity-timeout", "5", "--background", "0.2", *extra]
        log = open(tmp_path / f"{name}-{label}.log", "w")
        if name == COLLUDER:
            procs[name] = subprocess.Popen(
                [sys.executable, str(ROOT / "tests/colluding_validator.py"), *argv],
                env={**os.environ, "SN19_COLLUDE": colluding_with, "PYTHONUNBUFFERED": "1"},
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        else:
            procs[name] = neuron("validator", argv, stdout=log, stderr=subprocess.STDOUT)
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


@dataclass
class Net:
    """The local subnet with its validators registered and every miner serving."""

    chain: LocalSubnet
    common: list[str]  # the flags every neuron takes: network, wallets, period
    folder: Path
    hotkeys: dict[str, str]  # validator hotkey -> name
    uids: dict[str, int]  # miner name -> uid
    miners: dict[str, str]  # miner name -> hotkey


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared-reports")
    net = new_net(folder, "wallets", block_time=BLOCK_S, tempo=PB, age_blocks=25 * PB)
    chain, wallets = net.local, net.wallets
    hotkeys, uids, miners = {}, {}, {}
    for name, stake in VALIDATORS.items():
        w = net.validator(name, stake=stake, coldkey=OWN)
        hotkeys[w.hotkey.ss58_address] = name
    by_name = {n: k for k, n in hotkeys.items()}
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(wallets),
              "--period-blocks", str(PB), "--log-level", "INFO"]
    ports = dict(zip(MINERS, free_ports(len(MINERS))))
    procs = {}
    try:
        for name in MINERS:
            w = net.miner(name, coldkey=OWN, endpoint=f"http://127.0.0.1:{ports[name]}")
            miners[name] = w.hotkey.ss58_address
            uids[name] = net.uids[name]
            config = folder / f"{name}.yml"
            declared = DECLARES.get(name, 1.0) * DECLARED
            config.write_text(f"tasks:\n  {CHAT}: {{capacity: {declared}}}\n")
            argv = [*common, "--config", str(config), "--wallet-name", name, "--host",
                    "127.0.0.1", "--port", str(ports[name]), "--min-stake", "0",
                    "--torch-threads", "1", "--sync-interval", "2", "--state-dir",
                    str(folder / "state")]
            log = open(folder / f"{name}.log", "w")
            if name in HOSTILE:
                procs[name] = subprocess.Popen(
                    [sys.executable, str(ROOT / "tests/hostile_miner.py"), *argv],
                    env={**os.environ, "SN19_HOSTILE": HOSTILE[name], "PYTHONUNBUFFERED": "1",
                         "SN19_FAVOURITE": ",".join(by_name[v]
                                                    for v in SERVES.get(name, ("v45",)))},
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            else:
                procs[name] = neuron("miner", argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        for name in MINERS:
            wait_healthy(ports[name], procs[name], deadline)
        chain.open_windows(PB, 6)  # an audit window in every period either run can land in
        yield Net(chain, common, folder, hotkeys, uids, miners)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def shared(net):
    """One period of the three validators sharing reports: their databases and weights."""
    dbs = run_validators(net.chain, net.common, net.folder, "shared", [],
                         net.miners["colluded"])
    return dbs, vectors(net.chain, net.hotkeys, net.uids, 0)


@pytest.mark.timeout(900)
def test_shared_reports_make_validators_agree_on_a_stake_first_miner(net, shared):
    shared, with_sharing = shared
    since = len(net.chain.weights_log())
    run_validators(net.chain, net.common, net.folder, "alone", ["--no-share-reports"],
                   net.miners["colluded"])
    alone = vectors(net.chain, net.hotkeys, net.uids, since)

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
        # declaring 1.7x and serving 65% of the stake: judged by the 35% it refused first
        assert v[MINERS.index("stake-first-1.7")] <= v[twin], (name, v)
        # v20 (20%) fabricates full service for a miner that refuses everyone else: the top
        # 30% of the reports' weight is not counted, so it lifts it by nothing
        assert v[MINERS.index("colluded")] == 0.0, (name, v)

    # what each validator spent on each miner is what its records say it sent
    for name, db in shared.items():
        store = open_store(db)
        period = store.latest_period()
        records: dict[tuple[str, str], float] = {}
        for r in store.records(period):
            records[(r.hotkey, r.task)] = records.get((r.hotkey, r.task), 0.0) + r.units
        for key, (_, used) in store.spent(period).items():
            assert used == pytest.approx(records.get(key, 0.0)), (name, key)
        store.close()

    # alone: the largest validator pays the stake-first miner more than its twin; the others
    # do not, and the vectors disagree
    assert alone["v45"][stake_first] > alone["v45"][twin], alone
    assert alone["v20"][stake_first] <= alone["v20"][twin], alone
    assert alone["v20"][dodger] <= alone["v20"][twin], alone  # its own view: refused, failed
    assert min(apart.values()) < 0.99, apart


@pytest.mark.timeout(900)
def test_an_equivocator_is_paid_nothing_by_every_validator_holding_the_proof(net, shared):
    dbs, weights = shared
    liar = net.miners["equivocator"]
    print("shared:", {n: v.round(3).tolist() for n, v in weights.items()})
    for name, db in dbs.items():
        store = open_store(db)
        period = store.latest_period()
        held = declared_in(store, period, store.reports(period))
        store.close()
        # what it was told, and the other declaration a peer's report carried
        assert held.own[liar].capacities[CHAT] == (2 if name == "v45" else 1) * DECLARED
        assert set(held.proofs) == {liar}, (name, held.proofs)
        assert sorted(d.capacities[CHAT] for d in held.proofs[liar]) == [DECLARED, 2 * DECLARED]
        v = weights[name]
        assert v[MINERS.index("equivocator")] == 0.0, (name, v)
        assert v[MINERS.index("twin")] > 0 and v[MINERS.index("honest")] > 0, (name, v)
