"""What a stopped process held of the budgets is given back, and nothing a live one holds
(core/validator/replica.py, ``give_back``; docs/protocol.md §6), on a real PostgreSQL server with
the real lease: two stores stand for the two processes; the leader's store connection is cut
while its requests are in flight (its lease's session terminated, its statements refused), the
follower takes the lease and gives back what stopped processes hold. Whether the leader was
alive, cut off past its beats or dead, ``used == Σ records`` for the period afterwards; with its
requests in flight and alive, nothing of them was given back under them."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from core.budget import Contender
from core.records import Outcome, RequestRecord
from core.storage import AsyncStore, open_store
from core.validator.recorder import Recorder
from core.validator.replica import give_back
from core.validator.shards import Shards
from tests.flaky_store import make_flaky, used_and_records

TARGETS = [Contender(1, "hk1", "inpaint", 1000.0, 1000.0, 7)]
IN_FLIGHT = 8


@pytest.fixture
def dsn(postgres_dsn):
    schema = f"takeover_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{postgres_dsn}?options=-csearch_path%3D{schema}"


def cut_session(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.parametrize("leader_is", ["alive", "cut-off", "dead"])
def test_a_takeover_gives_back_only_what_stopped_processes_held(dsn, leader_is):
    leader, follower = open_store(dsn), open_store(dsn)
    leader.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    mine, theirs = leader.lease("period-loop:v"), follower.lease("period-loop:v")
    shards = Shards(AsyncStore(follower), follower.member)
    try:
        assert mine.acquire() and not theirs.acquire()
        # the leader said it was alive just now, or long ago (cut off past its beats, or dead)
        leader.beat(leader.member, 5.0)
        if leader_is != "alive":
            leader._run("UPDATE senders SET seen = seen - 100")
        holds = [leader.reserve(5, "hk1", "inpaint", 10) for _ in range(IN_FLIGHT)]
        assert all(holds)  # the leader's requests in flight
        flaky = make_flaky(leader, "server closed the connection unexpectedly")
        recorder = Recorder(leader, retry_s=0.05)

        async def main() -> float:
            # the cut: the lease's session ends on the server, every other statement fails
            assert mine._conn is not None
            cut_session(dsn, mine._conn.info.backend_pid)
            flaky.refusing = True
            assert not mine.held()
            assert theirs.acquire()  # the follower takes the loop
            if leader_is == "dead":  # its requests never end: nothing is ever recorded
                return await give_back(AsyncStore(follower), shards)
            ended = await asyncio.gather(*(recorder.finish(RequestRecord(
                5, "hk1", "inpaint", False, Outcome.OK, 6.0, 0.5, None, 1.0), 10, held)
                for held in holds))
            assert ended == [None] * IN_FLIGHT  # journaled meanwhile
            given = await give_back(AsyncStore(follower), shards)
            flaky.refusing = False  # its connection is back: the journal is written
            await asyncio.wait_for(recorder.drained(), 30)
            return given

        given = asyncio.run(main())
        (used, recorded), = used_and_records(follower, 5).values()
        assert recorded == (0.0 if leader_is == "dead" else IN_FLIGHT * 6.0)
        assert used == recorded
        # alive, nothing it held was given back under its requests in flight
        assert given == (0.0 if leader_is == "alive" else IN_FLIGHT * 10.0)
        assert follower.holders() == set()
    finally:
        theirs.release()
        mine.release()
        leader.close()
        follower.close()


def test_a_file_lock_gives_back_its_dead_holder_at_once_and_no_live_process(tmp_path):
    """SQLite's lease (an flock) is freed only by its holder's death: its next holder gives back
    what that holder held at once, however recently it said it was alive, and nothing of a third
    process still alive on the same file."""
    from core.storage.sqlite import FileLease

    dead, alive, restarted = (open_store(str(tmp_path / "v.sqlite3")) for _ in range(3))
    try:
        dead.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
        assert dead.lead(dead.member, 5.0) is None
        alive.beat(alive.member, 5.0)
        assert dead.reserve(5, "hk1", "inpaint", 10) and alive.reserve(5, "hk1", "inpaint", 10)
        shards = Shards(AsyncStore(restarted), restarted.member)
        assert asyncio.run(give_back(AsyncStore(restarted), shards)) == 0.0  # both seen alive
        lease = restarted.lease("period-loop:v")
        assert isinstance(lease, FileLease) and lease.acquire()  # the holder is dead
        before = restarted.lead(restarted.member, 5.0)
        assert before == dead.member
        assert asyncio.run(give_back(AsyncStore(restarted), shards, dead=[before])) == 10.0
        assert restarted.spent(5)[("hk1", "inpaint")] == (1000.0, 10.0)  # the live one's
        lease.release()
    finally:
        for s in (dead, alive, restarted):
            s.close()
