"""The validator's store, the same tests on SQLite and on a real PostgreSQL server."""

import asyncio
import contextlib
import threading
import time

import pytest
from bittensor.sp_core import Keypair

from core.budget import Contender
from core.declaration import sign
from core.plan import Window
from core.pooling import Pooling
from core.records import Outcome, RequestRecord
from core.scoring import ContenderState, PeriodOutcome, Tally, WindowOutcome, advance
from core.storage import AsyncStore, StorageError, Store, open_store
from core.storage.schema import MIGRATIONS
from core.storage.store import PeriodInfo
from core.window_report import report_of
from tests.records import finish, record

TARGETS = [Contender(1, "hk1", "inpaint", 100.0, 50.0, 7),
           Contender(2, "hk2", "chat-llama-3", 3000.0, 1500.0, 9)]


def rec(period, outcome=Outcome.OK, units=20.0, quality=1.0):
    return RequestRecord(period, "hk1", "inpaint", False, outcome, units, 0.5, quality, 1.0)


def test_period_plan_round_trip(store):
    assert store.period(5) is None
    stakes = {"v1": 30.0, "v2": 10.5}
    store.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS, stakes)
    store.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS)  # a resumed start changes nothing
    assert store.period(5) == PeriodInfo(1500, "0xabc", 0.25, 123.0, False, stakes)
    assert store.contenders(5) == TARGETS
    assert store.unfinished(before=6) == [5] and store.unfinished(before=5) == []


def test_windows_keep_their_first_start(store):
    store.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS)
    first = store.add_window(5, Window(1510, 1000.0, 60.0))
    again = store.add_window(5, Window(1510, 1030.0, 60.0))  # a restart inside the window
    store.add_window(5, Window(1580, 2000.0, 60.0))
    assert first == again == Window(1510, 1000.0, 60.0)
    assert [w.block for w in store.windows(5)] == [1510, 1580] and store.windows(6) == []


def test_window_reports_and_how_windows_were_scored_round_trip(store):
    store.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS)
    store.add_window(5, Window(1510, 1000.0, 60.0))
    slices = (Tally(10, 8, 1, 1, 2),) + (Tally(),) * 4
    report = report_of(19, "v1", 1510, {("hk1", "inpaint"): WindowOutcome(1510, slices)})
    assert store.add_report(5, report, 1.0)
    assert not store.add_report(5, report_of(19, "v1", 1510, {}), 2.0)  # the first one stays
    assert store.report(1510, "v1") == report and store.report(1510, "v2") is None
    assert store.report_body(1510, "v1") == report.model_dump_json()
    assert store.reporters(1510) == {"v1"} and store.reporters(1511) == set()
    assert store.reports(5) == {1510: {"v1": report}}
    assert report.outcomes() == {("hk1", "inpaint"): WindowOutcome(1510, slices)}
    assert store.poolings(5) == {}
    store.note_pooling(5, Pooling(1510, 0.8, ("v1", "v2")))
    assert store.poolings(5) == {1510: Pooling(1510, 0.8, ("v1", "v2"))}
    store.prune(6)
    assert store.reports(5) == {}


def test_signed_declarations_are_kept_with_the_period_and_carried_in_reports(store):
    miner = Keypair.create_from_uri("//hk1")
    told = sign(miner, 19, 5, {"inpaint": 100.0})
    store.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS, {}, [told])
    # a resumed start keeps the declaration first stored
    store.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS, {},
                       [sign(miner, 19, 5, {"inpaint": 1.0})])
    assert store.declarations(5) == {miner.ss58_address: told} and store.declarations(6) == {}
    assert store.declarations(5)[miner.ss58_address].signed_by_hotkey()
    report = report_of(19, "v1", 1510, {}, store.declarations(5).values())
    store.add_report(5, report, 1.0)
    assert store.report(1510, "v1").declarations == [told]
    store.prune(6)
    assert store.declarations(5) == {}


def test_contenders_found_at_the_close_join_the_planned_ones(store):
    store.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS[:1])
    silent = Contender(3, "hk3", "inpaint", 80.0, 0.0, 4)
    store.add_contenders(5, [silent, Contender(1, "hk1", "inpaint", 1.0, 1.0, 7)])
    assert store.contenders(5) == [TARGETS[0], silent]  # a planned one stays as planned


def test_records_round_trip_in_order(store):
    records = [
        rec(3),
        rec(3, Outcome.RATE_LIMITED, quality=None),
        rec(4, Outcome.TIMEOUT, quality=None),
    ]
    for r in records:
        record(store, r)
    assert store.records(3) == records[:2] and store.records(4) == records[2:]
    other = RequestRecord(3, "hk2", "chat-llama-3", True, Outcome.OK, 64.0, 0.2, None, 2.0)
    record(store, other)
    assert store.records(3, "hk1") == records[:2] and store.records(3, "hk2") == [other]


def test_states_round_trip_and_finish_marks_the_period(store):
    store.begin_period(5, 1500, "0xabc", 1.0, 0.0, TARGETS)
    window = WindowOutcome(1510, (Tally(20, 10, 0, 10, 1),) * 5)
    state = advance(ContenderState(), PeriodOutcome(100, (window,), Tally(5, 5, requests=1),
                                                    1.5, 2), 7)
    store.finish_period(5, {("hk1", "inpaint"): state})
    assert store.states() == {("hk1", "inpaint"): state}
    assert store.period(5).finished and store.unfinished(before=6) == []
    later = advance(state, PeriodOutcome(100, other=Tally(5, 5, requests=1)), 7)
    store.finish_period(6, {("hk1", "inpaint"): later, ("hk2", "chat-llama-3"): state})
    assert store.states()[("hk1", "inpaint")] == later
    assert store.states("hk2") == {("hk2", "chat-llama-3"): state}


def test_the_last_finished_period_after_a_bound(store):
    for period in (3, 4, 5):
        store.begin_period(period, period * 10, "0x", 1.0, 0.0, TARGETS)
    assert store.last_finished(after=0) is None
    store.finish_period(4, {})
    assert store.last_finished(after=0) == 4 and store.last_finished(after=4) is None


def test_a_state_of_another_version_is_refused_and_an_unversioned_one_read(store):
    import json
    from dataclasses import asdict

    state = ContenderState(declared=5.0, credited=4.0)
    legacy = json.dumps(asdict(state))  # as written before states carried a version
    store.db.execute("INSERT INTO states VALUES (?, ?, ?, ?)", ("hk1", "inpaint", 1, legacy))
    assert store.states() == {("hk1", "inpaint"): state}
    newer = json.dumps({"version": 99, **asdict(state)})
    store.db.execute("UPDATE states SET state = ?", (newer,))
    with pytest.raises(StorageError, match="version 99"):
        store.states()


def test_api_keys_are_typed_and_a_name_is_taken_once(store):
    assert store.add_api_key("a", "sn19-abc", "d1", 5, 1.0)
    assert not store.add_api_key("a", "sn19-xyz", "d2", 5, 2.0)
    [key] = store.api_keys()
    assert (key.name, key.prefix, key.per_minute, key.revoked_at) == ("a", "sn19-abc", 5, None)
    assert store.api_keys("d1") == [key] and store.api_keys("d2") == []
    assert store.revoke_api_key("a", 3.0) and not store.revoke_api_key("a", 4.0)
    assert store.api_keys("d1") == [] and store.api_keys()[0].revoked_at == 3.0


def test_weights_and_prune(store):
    assert store.last_weights() is None
    store.note_weights(100, 1.0, {1: 0.25, 3: 0.75})
    store.note_weights(130, 2.0, {1: 0.5})
    assert store.last_weights() == (130, {1: 0.5})
    for p in (1, 2, 3):
        store.begin_period(p, p * 10, "0x", 1.0, 0.0, TARGETS)
        record(store, rec(p))
    store.prune(before_period=3)
    assert store.records(1) == [] and store.contenders(2) == [] and store.period(2) is None
    assert len(store.records(3)) == 1 and store.period(3) is not None


def test_migrations_are_recorded_and_reapplying_is_a_no_op(tmp_path):
    path = str(tmp_path / "v.sqlite3")
    first = open_store(path)
    record(first, rec(1))
    first.close()
    again = open_store(path)
    assert again.version == len(MIGRATIONS) and len(again.records(1)) == 1


def test_a_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "v.sqlite3")
    s = open_store(path)
    s._run("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS) + 1,))
    s.close()
    with pytest.raises(StorageError, match="newer than this code"):
        open_store(path)


def test_unreadable_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "v.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="v.sqlite3"):
        open_store(str(bad))


def test_unreachable_postgres_is_a_clear_error_without_the_password():
    with pytest.raises(StorageError, match="cannot connect") as err:
        open_store("postgresql://v:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(err.value)


def test_reservations_stay_within_the_budget_and_the_cap(store):
    store.begin_period(5, 1500, "0xabc", 1.0, 0.0, TARGETS)  # hk1/inpaint: budget 50
    assert store.reserve(5, "hk1", "inpaint", 30)
    assert not store.reserve(5, "hk1", "inpaint", 30)  # 60 > 50
    assert store.reserve(5, "hk1", "inpaint", 20)
    store.settle(5, "hk1", "inpaint", -15)  # a request used 15 less than it reserved
    assert store.spent(5, "inpaint") == {("hk1", "inpaint"): (50.0, 35.0)}
    assert not store.reserve(5, "hk1", "inpaint", 5, cap=35)  # the plan's share is used
    assert store.reserve(5, "hk1", "inpaint", 5, cap=36)
    assert not store.reserve(6, "hk1", "inpaint", 1)  # no such period planned


def test_concurrent_reservations_from_many_connections_never_overspend(postgres_dsn, tmp_path):
    """Eight connections (as eight API replicas would hold) race for one budget of 50 units."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "race"')
    dsn = f"{postgres_dsn}?options=-csearch_path%3Drace"
    stores = [open_store(dsn) for _ in range(8)]
    stores[0].begin_period(5, 1500, "0xabc", 1.0, 0.0, TARGETS)

    def spend(store) -> int:
        return sum(store.reserve(5, "hk1", "inpaint", 3) is not None for _ in range(20))

    with ThreadPoolExecutor(8) as pool:
        granted = sum(pool.map(spend, stores))
    assert granted == 16  # 16 x 3 = 48 <= 50 < 17 x 3, whatever the interleaving
    assert stores[0].spent(5, "inpaint")[("hk1", "inpaint")] == (50.0, 48.0)
    for s in stores:
        s.close()


def pg_store(dsn: str, schema: str):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return open_store(f"{dsn}?options=-csearch_path%3D{schema}")


def test_store_calls_on_postgresql_leave_the_event_loop_running(postgres_dsn):
    """A call waiting on the database (here a statement that sleeps 0.4 s) runs in a thread on a
    pooled connection: the loop keeps serving, and calls overlap rather than queue."""
    store = pg_store(postgres_dsn, "offloop")

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        began = time.perf_counter()
        await asyncio.gather(*(store.io(store.db.execute, "SELECT pg_sleep(0.4)")
                               for _ in range(4)))
        elapsed = time.perf_counter() - began
        t.cancel()
        return ticks, elapsed

    ticks, elapsed = asyncio.run(main())
    store.close()
    assert ticks >= 5  # blocked, the loop would not have ticked once until the calls ended
    assert elapsed < 4 * 0.4  # one after another they would take 1.6 s at least


def test_a_coroutine_reaches_either_database_only_from_the_stores_threads(store, monkeypatch):
    """SQLite too: a commit there waits on the disk, or up to 5 s on another process's lock."""
    seen = []
    execute = store.db.execute

    def spy(sql, args=()):
        seen.append(threading.current_thread().name)
        return execute(sql, args)

    monkeypatch.setattr(store.db, "execute", spy)
    aio = AsyncStore(store)

    async def main():
        await aio.begin_period(5, 1500, "0xabc", 0.25, 123.0, TARGETS)
        return await aio.period(5), await aio.run(Store.contenders, 5)

    info, contenders = asyncio.run(main())
    assert info.block == 1500 and contenders == TARGETS
    assert seen and all(name.startswith("store") for name in seen), seen


def test_a_record_is_written_when_its_caller_is_cancelled_waiting_on_postgresql(postgres_dsn):
    store = pg_store(postgres_dsn, "cancelled")
    store.begin_period(5, 1500, "0xabc", 1.0, 0.0, TARGETS)
    assert store.reserve(5, "hk1", "inpaint", 10)
    record = RequestRecord(5, "hk1", "inpaint", False, Outcome.OK, 10, 0.5)

    async def main():
        task = asyncio.create_task(store.io(finish, store, record, 10))
        await asyncio.sleep(0)  # the call has gone to its thread
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    store.close()  # waits for calls under way
    reopened = open_store(f"{postgres_dsn}?options=-csearch_path%3Dcancelled")
    assert [r.units for r in reopened.records(5)] == [10]
    reopened.close()


def test_a_lease_has_one_holder_until_it_is_released(store):
    first, second = store.lease("period-loop:v"), store.lease("period-loop:v")
    other = store.lease("period-loop:another-validator")
    assert first.acquire() and first.held()
    assert not second.acquire() and not second.held()
    assert other.acquire()  # another name, another lease
    first.release()
    assert second.acquire() and second.held()
    second.release()
    other.release()


def used_and_recorded(store, period):
    """Per contender of ``period``: (used, Σ units of its records), which must agree."""
    records = store.records(period)
    return {key: (used, sum(r.units for r in records if (r.hotkey, r.task) == key))
            for key, (_, used) in store.spent(period).items()}


def test_a_request_is_settled_with_its_record_and_used_is_their_sum(store):
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    assert store.reserve(5, "hk1", "inpaint", 30)
    assert finish(store, rec(5, units=20.0), reserved=30) == (1, 5)  # served less
    assert store.reserve(5, "hk1", "inpaint", 20)
    finish(store, rec(5, Outcome.TIMEOUT, units=20.0, quality=None), reserved=20)
    assert used_and_recorded(store, 5)[("hk1", "inpaint")] == (40.0, 40.0)


def test_a_request_ending_after_its_period_was_sealed_lands_in_the_next(store):
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    assert store.reserve(5, "hk1", "inpaint", 20)  # in flight while period 5 closes
    store.seal(5)
    _, period = finish(store, rec(5, units=15.0), reserved=20)
    assert period == 6 and store.records(5) == [] and store.records(6)[0].units == 15.0
    assert used_and_recorded(store, 5)[("hk1", "inpaint")] == (0.0, 0.0)
    store.begin_period(6, 1800, "0x", 1.0, 0.0, TARGETS)  # begins after: counts it in
    assert used_and_recorded(store, 6)[("hk1", "inpaint")] == (15.0, 15.0)
    assert store.reserve(6, "hk1", "inpaint", 10)
    store.seal(6)
    _, period = finish(store, rec(6, units=10.0), reserved=10)
    assert period == 7  # past every sealed period, even with none open yet


def test_what_a_dead_process_held_is_given_back_and_nothing_a_live_one_holds(store):
    """docs/protocol.md §6: each reservation is held in its process's name until its record
    settles it; giving back a process's holds leaves ``used == Σ records`` whether its records
    come before, after (a process cut off, not dead) or never (a kill -9), and leaves another
    process's holds, with their requests still in flight, counted."""
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    me = store.member
    store.member = "dead"  # another process on the database, as its own store names it
    dead = [store.reserve(5, "hk1", "inpaint", 10) for _ in range(4)]
    finish(store, rec(5, units=6.0), reserved=10, held=dead[0])  # recorded before
    store.member = me
    mine = store.reserve(5, "hk1", "inpaint", 10)  # live, in flight
    assert all(dead) and mine and store.holders() == {"dead", me}
    assert store.release(["dead"]) == 30.0 and store.holders() == {me}
    store.member = "dead"  # it was cut off, not dead: one of its records arrives after all
    finish(store, rec(5, units=7.0), reserved=10, held=dead[1])  # counted in full
    store.member = me
    # dead[2] and dead[3] are never recorded; our own request is still in flight
    budget_used, recorded = used_and_recorded(store, 5)[("hk1", "inpaint")]
    assert recorded == 13.0 and budget_used == 13.0 + 10.0  # ours stays reserved
    finish(store, rec(5, units=4.0), reserved=10, held=mine)
    assert used_and_recorded(store, 5)[("hk1", "inpaint")] == (17.0, 17.0)
    assert store.holders() == set() and store.release(["dead", me]) == 0.0


def test_a_hold_number_is_never_used_twice_by_a_process(store):
    """After a give-back, a new reservation gets a number the process never used: the record of
    a request whose hold was given back cannot end another request's hold."""
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    first = store.reserve(5, "hk1", "inpaint", 10)
    store.release([store.member])
    second = store.reserve(5, "hk1", "inpaint", 10)
    assert first != second
    finish(store, rec(5, units=4.0), reserved=10, held=first)  # given back: counts in full
    assert used_and_recorded(store, 5)[("hk1", "inpaint")] == (14.0, 4.0)  # second in flight
    finish(store, rec(5, units=5.0), reserved=10, held=second)
    assert used_and_recorded(store, 5)[("hk1", "inpaint")] == (9.0, 9.0)


def test_a_give_back_racing_records_and_reservations_keeps_used_equal_to_records(
        postgres_dsn):
    """Two connections on PostgreSQL: one gives back a process's holds while that process's
    records end them and it reserves more, in many interleavings; afterwards every hold left is
    ended by its record, and ``used == Σ records`` (the give-back once read its holds, then
    deleted them: a hold ended in between was given back twice)."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "holdrace"')
    dsn = f"{postgres_dsn}?options=-csearch_path%3Dholdrace"
    process, taker = open_store(dsn), open_store(dsn)
    try:
        process.begin_period(5, 1500, "0x", 1.0, 0.0, [Contender(1, "hk1", "inpaint", 1e9,
                                                                 1e9, 7)])

        def serve() -> None:  # reserve, then record, 400 requests
            for _ in range(400):
                held = process.reserve(5, "hk1", "inpaint", 10)
                finish(process, rec(5, units=6.0), reserved=10, held=held)

        def give_back() -> None:
            for _ in range(200):
                taker.release([process.member])

        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(serve), pool.submit(give_back)]:
                f.result()
        assert process.holders() == set()
        assert used_and_recorded(process, 5)[("hk1", "inpaint")] == (2400.0, 2400.0)
    finally:
        process.close()
        taker.close()


def test_the_database_and_the_nonce_store_are_private_to_their_user(tmp_path):
    from core.transport.nonces import SqliteNonceStore

    open_store(str(tmp_path / "v.sqlite3")).close()
    SqliteNonceStore(tmp_path / "nonces.sqlite3")
    for name in ("v.sqlite3", "nonces.sqlite3"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_api_use_is_counted_per_key_and_minute(store):
    assert [store.count_api_use("alice", 100) for _ in range(3)] == [1, 2, 3]
    assert store.count_api_use("bob", 100) == 1  # each key its own count
    assert store.count_api_use("alice", 101) == 1  # a new minute starts afresh
    assert store.count_api_use("alice", 103) == 1
    # past minutes are dropped as a new minute begins: the table stays a minute or two long
    assert {m for (m,) in store.db.execute("SELECT minute FROM api_use")} == {103}


def test_replicas_on_one_database_share_a_keys_rate_limit(tmp_path):
    from core.validator import keys

    path = str(tmp_path / "v.sqlite3")
    first, second = open_store(path), open_store(path)
    keys.create(first, "carol", per_minute=3)
    key = keys.find(first, keys.create(first, "dan", per_minute=3))
    limits = [keys.RateLimiter(first), keys.RateLimiter(second)]
    waits = [limits[i % 2].allow(key, now=6000.0 + i) for i in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] == 60 * 101 - 6003.0  # the 4th, either one


def test_a_check_that_ends_after_its_period_closed_counts_at_the_next_close(store):
    from core.validator.measure import measure_period

    store.begin_period(3, 900, "0x3", 1.0, 0.0, TARGETS[:1])
    in_time, late = record(store, rec(3, quality=None)), record(store, rec(3, quality=None))
    store.set_quality(in_time, 0.5)
    store.seal(3)  # period 3 closes: its records are read now
    store.begin_period(4, 1200, "0x4", 1.0, 0.0, TARGETS[:1])
    store.set_quality(late, 0.0, "images differ")  # ended after period 3's close
    assert store.late_checks(3) == [] and store.late_checks(4) == [("hk1", "inpaint", 0.0)]
    assert [r.quality for r in store.records(3)] == [0.5, 0.0]
    record(store, rec(4, quality=1.0))
    measured, _ = measure_period(store, 4, TARGETS[:1], 300, pooled=False)
    outcome, requests = measured[("hk1", "inpaint")]
    assert requests == 1 and (outcome.quality_sum, outcome.quality_n) == (1.0, 2)
    store.seal(4)
    store.set_quality(in_time, 0.25)  # checked again after two closes: counts at the third
    assert store.late_checks(5) == [("hk1", "inpaint", 0.25)]
