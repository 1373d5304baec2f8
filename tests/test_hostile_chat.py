"""A chat miner that ignores the request's seed (an API forwarder: the right model, sampled by its
own random stream) beside its honest twin with the same declaration, through a real validator
process that checks every answer on the CPU (docs/protocol.md §8): the replay of the protocol's
sampler fails its answers at temperature > 0, so it earns less than its twin on chat (nothing
when every checked answer fails) and at most its twin's weight, and every request it was sent is
recorded (`used == Σ record units`).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from core.localchain import LocalSubnet
from core.scoring import effective
from core.storage import open_store
from devtools.localproc import (
    free_ports,
    neuron,
    start_miner,
    validated_subnet,
    wait_healthy,
)

pytestmark = [pytest.mark.process, pytest.mark.slow]

CHAT = "chat-llama-3"
PERIOD_BLOCKS, BLOCK_S = 30, 1.0
MINERS = ("honest", "ignore-seed")


@pytest.mark.timeout(300)
def test_a_miner_that_ignores_the_seed_earns_nothing_on_chat(tmp_path):
    chain, wallets, common = validated_subnet(tmp_path, PERIOD_BLOCKS, BLOCK_S)
    ports = dict(zip(MINERS, free_ports(len(MINERS))))
    hotkeys, uids, procs = {}, {}, {}
    try:
        for name in MINERS:
            config = tmp_path / f"{name}.yml"
            config.write_text(f"tasks:\n  {CHAT}: {{capacity: 600}}\n")
            hotkey, uids[name], procs[name] = start_miner(
                chain, wallets, name, ports[name], common, config, tmp_path / "state",
                open(tmp_path / f"{name}.log", "w"), "" if name == "honest" else name)
            hotkeys[hotkey] = name
        deadline = time.monotonic() + 120
        for name in MINERS:
            wait_healthy(ports[name], procs[name], deadline)
        chain.open_windows(PERIOD_BLOCKS, 2)
        db = tmp_path / "validator.sqlite3"
        # every answer checked, and a fifth of each budget outside windows
        run = neuron("validator", [
            *common, "--wallet-name", "validator", "--db", str(db), "--port", "0",
            "--periods", "1", "--capacity-timeout", "5", "--check", "cpu", "--check-rate", "1",
            "--background", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = run.communicate(timeout=6 * PERIOD_BLOCKS * BLOCK_S)[0]
        assert run.returncode == 0 and "Traceback" not in output, output[-4000:]
    finally:
        for p in procs.values():
            p.kill()
            p.wait()

    closed = [int(line.split()[2]) for line in output.splitlines()
              if line.startswith("== period ")]
    assert closed, output[-4000:]
    store = open_store(str(db))
    records = store.records(closed[0])
    assert {hotkeys[r.hotkey] for r in records} == set(MINERS), records
    for (hotkey, task), (_, used) in store.spent(closed[0]).items():
        mine = [r for r in records if (r.hotkey, r.task) == (hotkey, task)]
        assert used == pytest.approx(sum(r.units for r in mine)), (hotkeys[hotkey], task)
    checked = {name: [r for r in records if r.quality is not None and hotkeys[r.hotkey] == name]
               for name in MINERS}
    assert checked["honest"] and all(r.quality == 1.0 for r in checked["honest"]), checked
    # the tiny model's text is nearly deterministic, so a few answers drawn with another seed
    # are the request's draw anyway (~3%, scripts/bench_checker_tolerance.py): some fail
    hostile_key = next(k for k, n in hotkeys.items() if n == "ignore-seed")
    reasons = store.failed_checks(closed[0], hostile_key).get(CHAT, {})
    assert reasons and all("protocol sampler's draw" in why for why in reasons), reasons
    states = {(hotkeys[h], task): s for (h, task), s in store.states().items()}
    honest, hostile = states[("honest", CHAT)], states[("ignore-seed", CHAT)]
    assert honest.credited > 0 and effective(hostile) < effective(honest), (hostile, honest)
    weights = LocalSubnet(chain.folder).weights_log()
    last = {int(u): w for u, w in weights[-1]["weights"].items()}
    assert last.get(uids["ignore-seed"], 0.0) <= last[uids["honest"]], last
