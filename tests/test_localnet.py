"""End to end: the local subnet in real processes (3 miners, 3 validators) on 127.0.0.1."""

import subprocess
import sys
from pathlib import Path

from core.chain.local import LocalChain
from core.storage import open_store

ROOT = Path(__file__).resolve().parent.parent


def test_localnet_sets_weights_that_follow_served_capacity(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/localnet.py"), "--periods", "1",
         "--dir", str(tmp_path / "net")],
        capture_output=True, text=True, timeout=420, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "== period" in run.stdout and "w.asked" in run.stdout
    # protocol 5 end to end: a window opened at a block (localnet chose hashes that open one in
    # the period), every contender was sent its rate in it and demonstrated what it served
    store = open_store(str(tmp_path / "net/validator.sqlite3"))
    period = int(run.stdout.split("== period ")[1].split()[0])
    windows = store.windows(period)
    assert windows and all(w.block // 60 == period for w in windows)
    assert f"windows: block {windows[0].block} " in run.stdout
    assert len(store.contenders(period)) == 9
    states = store.states()
    assert len(states) == 9 and all(len(s.demonstrated_w) == len(windows) for s in states.values())
    for w in windows:  # each window sent every contender its rate
        in_window = [r for r in store.records(period) if w.slice_of(r.at) is not None]
        assert {(r.hotkey, r.task) for r in in_window} == set(states)
    # every window was scored from the three validators' pooled reports
    assert all(p.used and p.coverage == 1.0 for p in store.poolings(period).values())
    assert "pooled: 3 reports, 100% of stake" in run.stdout
    log = LocalChain(tmp_path / "net/chain").weights_log()
    assert {entry["uid"] for entry in log} == {0, 4, 5}  # each validator set weights
    w = {int(uid): v for uid, v in next(e for e in log if e["uid"] == 0)["weights"].items()}
    # uids 1, 2, 3 are the small, medium and large miners; no validator gets anything
    assert not {0, 4, 5} & set(w)
    assert w[3] > w[2] > w[1] > 0
