"""One validator as two processes on one real PostgreSQL server: both serve organic traffic,
neither lets a contender's budget be overspent, one runs the period loop, and killing it, or
cutting its connections to the database while its requests are in flight, hands the loop to
the other with ``used == Σ records``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from core.storage import Store, open_store
from core.validator import keys
from devtools.localproc import free_ports, lone_validator, neuron, stop, wait_healthy
from tests.chains import new_net
from tests.flaky_store import used_and_records

pytestmark = [pytest.mark.process, pytest.mark.slow]

POLL_S = 1.0
STEPS = 4


def health(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()


def until(condition, within: float, what: str):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {within:g} s")


@dataclass
class Replicas:
    store: Store  # the database both share, as a third process sees it
    key: str  # an organic API key
    miner: str  # the miner's hotkey
    ports: list[int]  # the replicas' API ports
    procs: dict[int, subprocess.Popen]  # by API port


@contextmanager
def two_replicas(postgres_dsn: str, tmp_path, capacity: int) -> Iterator[Replicas]:
    """A miner of ``capacity`` steps of proteus-text-to-image and two validator processes (one
    hotkey) on one PostgreSQL schema, each with an API port; each replica's connections carry
    its port as their application_name (``sn19-<port>``), so that a test can cut them."""
    schema = f"replicas_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    dsn = f"{postgres_dsn}?options=-csearch_path%3D{schema}"
    net = new_net(tmp_path, "wallets", block_time=0.5, tempo=40, age_blocks=100_000)
    chain = net.local
    net.validator(stake=10_000.0, coldkey="cv")
    miner_port, *api_ports = free_ports(3)
    miner = net.miner(coldkey="cm", endpoint=f"http://127.0.0.1:{miner_port}")
    (tmp_path / "miner.yml").write_text(
        f"tasks:\n  proteus-text-to-image: {{capacity: {capacity}}}\n")
    store = open_store(dsn)
    key = keys.create(store, "test", per_minute=10_000)
    common = ["--network", f"local:{chain.folder}", "--wallet-path", str(tmp_path / "wallets"),
              "--period-blocks", "40"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(neuron("miner", [
            *common, "--wallet-name", "miner", "--config", str(tmp_path / "miner.yml"), "--host",
            "127.0.0.1", "--port", str(miner_port), "--min-stake", "0", "--torch-threads", "1",
            "--no-announce", "--state-dir", str(tmp_path / "state")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_healthy(miner_port, procs[0], time.monotonic() + 120)  # before the loop asks it
        replicas = {port: lone_validator(
            common, "validator", dsn, "--check", "off", "--tokenizers", "tiny", "--image-size",
            "64", "--api-port", str(port), "--api-host", "127.0.0.1", "--leader-poll",
            str(POLL_S), "--capacity-timeout", "5", env={"PGAPPNAME": f"sn19-{port}"},
            stdout=open(tmp_path / f"v{port}.log", "w"), stderr=subprocess.STDOUT)
            for port in api_ports}
        procs += replicas.values()
        for port, proc in replicas.items():
            wait_healthy(port, proc, time.monotonic() + 120)
        yield Replicas(store, key, miner.hotkey.ss58_address, api_ports, replicas)
    finally:
        stop(procs)
        store.close()


def test_two_api_replicas_share_budgets_and_hand_over_the_period_loop(postgres_dsn, tmp_path):
    with two_replicas(postgres_dsn, tmp_path, capacity=60) as rs:
        store, key, api_ports, replicas = rs.store, rs.key, rs.ports, rs.procs
        # both serve the period the loop planned (a fresh start may wait for the next period)
        period = until(lambda: len({health(p)["period"] for p in api_ports} - {None}) == 1
                       and health(api_ports[0])["period"], 60, "both replicas serve a period")
        leaders = [p for p in api_ports if health(p)["period_loop"]]
        assert len(leaders) == 1

        async def organic(port: int) -> int:
            async with httpx.AsyncClient(timeout=60) as client:
                r = await client.post(
                    f"http://127.0.0.1:{port}/v1/images/generations",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "proteus-text-to-image", "prompt": "a red cube",
                          "size": "64x64", "steps": STEPS, "seed": port})
                return r.status_code

        async def burst(n: int):
            return await asyncio.gather(*(organic(api_ports[i % 2]) for i in range(n)))

        # each replica serves from the shared budget (asked until it does: a period's budget
        # can be spent by the loop's own traffic before a loaded machine gets here; the next
        # period brings a fresh one)
        served: set[int] = set()

        def each_replica_serves() -> bool:
            served.update(p for p in api_ports
                          if p not in served and asyncio.run(organic(p)) == 200)
            return len(served) == 2

        until(each_replica_serves, 90, "each replica serves an organic request")
        statuses = asyncio.run(burst(40))
        assert 503 in statuses  # and the budget ran out: 40 x 4 steps is more than it holds
        for p in range(period, store.latest_period() + 1):  # neither overspends, in any period
            budget, used = store.spent(p).get(
                (rs.miner, "proteus-text-to-image"), (0.0, 0.0))
            records = store.records(p)
            assert used <= budget + 1e-9
            assert sum(r.units for r in records) <= budget + 1e-9
        served_ok = sum(r.organic for p in range(period, store.latest_period() + 1)
                        for r in store.records(p) if r.outcome.value == "ok")
        assert served_ok >= statuses.count(200) + 2

        leader = leaders[0]
        other = next(p for p in api_ports if p != leader)
        replicas[leader].send_signal(signal.SIGKILL)
        replicas[leader].wait()
        took = time.monotonic()
        until(lambda: health(other)["period_loop"], POLL_S + 5, "the other replica takes the loop")
        assert time.monotonic() - took <= POLL_S + 5


def test_a_leader_cut_from_the_database_hands_over_with_used_equal_to_the_records(postgres_dsn,
                                                                                  tmp_path):
    """The leader's every connection to the database is cut (its lease's session among them)
    while its requests are in flight: it stops its loop, its records are written once it
    reconnects, and the other replica takes the loop over, re-deriving ``used`` of the period
    only once the cut leader's requests are over, so that ``used == Σ records`` for it."""
    with two_replicas(postgres_dsn, tmp_path, capacity=600) as rs:
        store = rs.store
        leader = until(lambda: next((p for p in rs.ports if health(p)["period_loop"]), None),
                       60, "a replica runs the period loop")
        other = next(p for p in rs.ports if p != leader)

        def outstanding(period: int) -> tuple[float, float]:
            (used, recorded), = used_and_records(store, period).values()
            return used, recorded

        def in_flight() -> int | None:  # a period with units reserved and not yet recorded
            period = store.latest_period()
            return period if period is not None and (
                lambda u: u[0] > u[1])(outstanding(period)) else None

        period = until(in_flight, 120, "the leader has requests in flight")
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            cut = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                               "application_name = %s", (f"sn19-{leader}",)).fetchall()
        assert cut, "no connection of the leader to cut"
        until(lambda: health(other)["period_loop"], 60, "the other replica takes the loop")
        until(lambda: not health(leader)["period_loop"], 30, "the cut leader stops its loop")
        until(lambda: (info := store.period(period)) is not None and info.finished, 240,
              f"period {period} is closed")
        used, recorded = outstanding(period)
        print(f"period {period}: used {used}, Σ records {recorded}")
        assert store.records(period) and used == recorded  # abandoned ones may count 0
