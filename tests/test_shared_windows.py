"""A validator's windows shared by its processes (docs/protocol.md §6): the store's room on both
databases, and two real validator processes on one PostgreSQL database each sending its part of
a window to its own miner, one report of the window covering both parts, ``used == Σ records``."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import psycopg
import pytest

from core.storage import open_store
from devtools.localproc import free_ports, lone_validator, neuron, stop, wait_healthy
from tests.chains import new_net
from tests.flaky_store import used_and_records

POLL_S = 1.0
GHOST = "ghost"


def beats_until(dsn: str, stop: threading.Event) -> None:
    """A process that says it is alive every poll and does nothing else."""
    store = open_store(dsn)
    try:
        while not stop.is_set():
            store.beat(GHOST, POLL_S)
            stop.wait(POLL_S / 2)
    finally:
        store.close()


def aged(store, member: str, seconds: float) -> None:
    """``member``'s last word, ``seconds`` earlier than it was."""
    store._run("UPDATE senders SET seen = seen - ? WHERE member = ?", (seconds, member))


def test_processes_say_they_are_alive_and_a_window_keeps_its_first_sharers(store):
    """Alive is judged by the database's clock and each process's own poll: silent for 3 of
    its polls, it is not."""
    store.beat("b", 5.0)
    store.beat("a", 5.0)
    store.beat("slow", 60.0)  # a process polling every minute
    for member in ("a", "slow"):
        aged(store, member, 20.0)
    assert store.live() == ["b", "slow"]
    store.beat("a", 5.0)  # a later beat replaces the earlier
    assert store.live() == ["a", "b", "slow"]
    assert store.share_window(7, 2100, ["b", "a"]) == ["a", "b"]
    assert store.share_window(7, 2100, ["c"]) == ["a", "b"]  # a restart in it: kept
    assert store.window_members(2100) == ["a", "b"] and store.window_members(2200) == []
    assert store.shards(2100) == {"a": None, "b": None}
    store.shard_done(2100, "a", 12, 120.0)
    store.shard_done(2100, "z", 3, 120.0)  # not sharing it: nothing to note
    assert store.shards(2100) == {"a": 12, "b": None}


def test_the_loop_s_process_is_marked_and_its_predecessor_named(store):
    assert store.lead("a", 5.0) is None
    assert store.lead("b", 5.0) == "a" and store.lead("b", 5.0) is None
    assert store.live() == ["a", "b"]


def test_pruning_forgets_old_windows_sharers_and_processes_gone_since(store):
    store.begin_period(5, 1500, "0x5", 1.0, 1000.0, [])
    store.begin_period(6, 1800, "0x6", 1.0, 2000.0, [])
    store.share_window(5, 1510, ["a"])
    store.share_window(6, 1810, ["a"])
    store.beat("old", 1e9)  # a poll so long it stays alive: only its age can prune it
    store.beat("new", 1e9)
    aged(store, "old", store._run(f"SELECT {store.db.now} - 1500.0")[0][0])  # seen at 1500
    store.prune(before_period=6)  # period 6 began at 2000
    assert store.window_members(1510) == [] and store.window_members(1810) == ["a"]
    assert store.live() == ["new"]


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("silent", [False, True], ids=["two-processes", "a-silent-sharer"])
def test_two_processes_share_a_window_and_one_report_covers_both(postgres_dsn, tmp_path,
                                                                 silent):
    """Two validator processes (one hotkey) on one PostgreSQL schema and two miners: the
    window's miners are split one to each process, each records what it sent, and the loop's
    process reports the window once both parts have ended, with every request of both.
    ``silent``: the second process says it is alive but never follows the loop (its chain reads
    failing, say): the loop's process takes its part over, and its miner is asked in full."""
    schema = f"shared_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    dsn = f"{postgres_dsn}?options=-csearch_path%3D{schema}"
    net = new_net(tmp_path, "wallets", block_time=0.5, tempo=120, age_blocks=100_000)
    net.validator(stake=10_000.0, coldkey="cv")
    *miner_ports, api_a, api_b = free_ports(4)
    config = tmp_path / "miner.yml"
    config.write_text("tasks:\n  proteus-text-to-image: {capacity: 480}\n")
    common = ["--network", f"local:{net.local.folder}", "--wallet-path", str(net.wallets),
              "--period-blocks", "120"]
    procs: list[subprocess.Popen] = []
    store = open_store(dsn)
    try:
        for i, port in enumerate(miner_ports):
            net.miner(f"miner{i}", coldkey=f"cm{i}", endpoint=f"http://127.0.0.1:{port}")
            procs.append(neuron("miner", [
                *common, "--wallet-name", f"miner{i}", "--config", str(config), "--host",
                "127.0.0.1", "--port", str(port), "--min-stake", "0", "--torch-threads", "1",
                "--no-announce", "--state-dir", str(tmp_path / f"state{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, proc in zip(miner_ports, procs):
            wait_healthy(port, proc, time.monotonic() + 180)
        ghost = threading.Event()
        if silent:  # alive by its beats, sending nothing
            threading.Thread(target=beats_until, args=(dsn, ghost), daemon=True).start()
        for port in (api_a,) if silent else (api_a, api_b):
            procs.append(lone_validator(
                common, "validator", dsn, "--check", "off", "--tokenizers", "tiny",
                "--image-size", "64", "--api-port", str(port), "--api-host", "127.0.0.1",
                "--leader-poll", str(POLL_S), "--capacity-timeout", "5",
                stdout=open(tmp_path / f"v{port}.log", "w"), stderr=subprocess.STDOUT))
            wait_healthy(port, procs[-1], time.monotonic() + 180)

        def shared_and_reported() -> int | None:
            """A window both processes shared, both parts ended with requests, reported."""
            with psycopg.connect(dsn, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT block FROM window_senders GROUP BY block HAVING COUNT(*) = 2 "
                    "AND MIN(requests) > 0 ORDER BY block").fetchall()
            return next((b for (b,) in rows if store.reporters(b)), None)

        deadline, block = time.monotonic() + 420, None
        while block is None and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a neuron exited"
            block = shared_and_reported()
            time.sleep(1.0)
        ghost.set()
        logs = "\n".join((tmp_path / f"v{p}.log").read_text()[-3000:]
                         for p in ((api_a,) if silent else (api_a, api_b)))
        assert block is not None, f"no window shared by both processes and reported\n{logs}"
        shards = store.shards(block)
        (report,) = (store.report(block, v) for v in store.reporters(block))
        reported = sum(s.requests for row in report.rows for s in row.slices)
        assert reported == sum(shards.values()), (shards, reported)
        hotkeys = {row.hotkey for row in report.rows if sum(s.requests for s in row.slices)}
        assert len(hotkeys) == 2  # each process sent to its own miner, both in one report
        with psycopg.connect(dsn, autocommit=True) as conn:
            starters = dict(conn.execute("SELECT member, started FROM window_senders WHERE "
                                         "block = %s", (block,)).fetchall())
        if silent:  # the loop's process began both parts
            assert GHOST in starters and len(set(starters.values()) - {GHOST}) == 1
        else:
            assert all(member == by for member, by in starters.items())
        period = block // 120
        deadline = time.monotonic() + 240
        while not ((info := store.period(period)) and info.finished):
            assert time.monotonic() < deadline, f"period {period} is not closed\n{logs}"
            time.sleep(1.0)
        for used, recorded in used_and_records(store, period).values():
            assert used == pytest.approx(recorded)
    finally:
        stop(procs)
        store.close()
