"""A replica that takes over the period loop re-derives ``used`` only once the previous leader's
requests are over (core/validator/replica.py, ``Takeover``), on a real PostgreSQL server with the
real lease: two stores stand for the two processes; the leader's store connection is cut while
its requests are in flight (its lease's session terminated, its statements refused), the
follower takes the lease, and the leader's records, journaled meanwhile, are written when its
connection is back. Afterwards ``used == Σ records`` for the period; re-deriving at once, as a
takeover did before, leaves ``used`` short by the reservations it wiped."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from core.budget import Contender
from core.records import Outcome, RequestRecord
from core.storage import AsyncStore, open_store
from core.validator.recorder import Recorder
from core.validator.replica import Takeover
from tests.flaky_store import make_flaky, used_and_records

TARGETS = [Contender(1, "hk1", "inpaint", 1000.0, 1000.0, 7)]
IN_FLIGHT = 8
SETTLE_S = 10.0  # far above what the leader's records take to end and be written back here


@pytest.fixture
def dsn(postgres_dsn):
    schema = f"takeover_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{postgres_dsn}?options=-csearch_path%3D{schema}"


def cut_session(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.parametrize("settle_s", [SETTLE_S, 0.0], ids=["known-dead", "at-once"])
def test_a_takeover_rederives_used_only_once_the_old_leaders_requests_are_over(dsn, settle_s):
    leader, follower = open_store(dsn), open_store(dsn)
    leader.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    mine, theirs = leader.lease("period-loop:v"), follower.lease("period-loop:v")
    try:
        assert mine.acquire() and not theirs.acquire()
        for _ in range(IN_FLIGHT):  # the leader's requests in flight
            assert leader.reserve(5, "hk1", "inpaint", 10)
        flaky = make_flaky(leader, "server closed the connection unexpectedly")
        recorder = Recorder(leader, retry_s=0.05)

        async def main():
            # the cut: the lease's session ends on the server, every other statement fails
            assert mine._conn is not None
            cut_session(dsn, mine._conn.info.backend_pid)
            flaky.refusing = True
            assert not mine.held()
            assert theirs.acquire()  # the follower takes the loop
            takeover = Takeover(AsyncStore(follower), Recorder(follower), settle_s=settle_s)
            rederived = asyncio.create_task(takeover.rederive_used(5))
            await asyncio.sleep(0)  # it has begun (at once, or waiting for the settle time)
            ended = await asyncio.gather(*(
                recorder.finish(RequestRecord(5, "hk1", "inpaint", False, Outcome.OK, 6.0, 0.5,
                                              None, 1.0), 10) for _ in range(IN_FLIGHT)))
            assert ended == [None] * IN_FLIGHT  # journaled: the leader cannot write them
            flaky.refusing = False  # its connection is back
            await asyncio.wait_for(recorder.drained(), 30)
            await asyncio.wait_for(rederived, SETTLE_S + 30)

        asyncio.run(main())
        (used, recorded), = used_and_records(follower, 5).values()
        assert recorded == IN_FLIGHT * 6.0
        if settle_s:
            assert used == recorded
        else:  # the reservations were wiped under the requests, which then settled against them
            assert used == recorded - IN_FLIGHT * 10.0
    finally:
        theirs.release()
        mine.release()
        leader.close()
        follower.close()


def test_a_file_lock_is_known_dead_at_once_a_postgresql_lease_after_its_holder_stops(
        tmp_path, dsn):
    """SQLite's lease (an flock) is freed only by its holder's death; PostgreSQL's also by a
    live holder's broken connection, which then needs a poll to notice and its requests to end."""
    from core.validator.replica import STOP_S, settle_s

    lite, pg = open_store(str(tmp_path / "v.sqlite3")), open_store(dsn)
    try:
        assert settle_s(lite.lease("period-loop:v"), 5.0) == 0.0
        assert settle_s(pg.lease("period-loop:v"), 5.0) == 10.0 + STOP_S
    finally:
        lite.close()
        pg.close()
