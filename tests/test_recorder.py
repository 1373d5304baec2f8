"""Records written in batches (core/validator/recorder.py), on SQLite and on a real PostgreSQL
server: requests ending together share one transaction, every caller learns its record's id and
period (or the error), and a record is written whatever happens to its caller."""

import asyncio
import contextlib

import pytest

from core.budget import Contender
from core.records import Outcome, RequestRecord
from core.storage import StorageError
from core.validator.journal import Journal
from core.validator.recorder import Recorder
from tests.flaky_store import make_flaky, used_and_records
from tests.records import record

TARGETS = [Contender(1, "hk1", "inpaint", 1000.0, 1000.0, 7)]


def rec(units: float = 10.0) -> RequestRecord:
    return RequestRecord(5, "hk1", "inpaint", False, Outcome.OK, units, 0.5, None, 1.0)


def stored(store) -> dict[int, float]:
    """Record id -> units, of period 5."""
    return dict(store.db.execute("SELECT id, units FROM requests WHERE period = 5"))


def counting_batches(store) -> list[int]:
    """The sizes of the batches the store is asked to write, in order."""
    sizes: list[int] = []
    write = store.finish_requests

    def counted(finished):
        sizes.append(len(finished))
        return write(finished)

    store.finish_requests = counted
    return sizes


def test_requests_ending_together_share_one_transaction(store):
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    for _ in range(50):
        assert store.reserve(5, "hk1", "inpaint", 10)
    sizes = counting_batches(store)
    recorder = Recorder(store)

    async def main():
        return await asyncio.gather(*(recorder.finish(rec(units=6.0), 10) for _ in range(50)))

    written = asyncio.run(main())
    assert sizes == [50]  # one transaction, not fifty
    assert sorted(i for i, _ in written) == sorted(stored(store))
    assert {period for _, period in written} == {5}
    assert store.spent(5)[("hk1", "inpaint")][1] == 50 * 6.0  # each settled to what it served


def test_records_ending_while_a_batch_is_written_form_the_next(store):
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    sizes = counting_batches(store)
    recorder = Recorder(store)

    async def main():
        first = asyncio.create_task(recorder.finish(rec(), 10))
        await asyncio.sleep(0)  # the writer has not run yet: the first batch is still open
        late = [recorder.finish(rec(), 10) for _ in range(3)]
        return await asyncio.gather(first, *late)

    asyncio.run(main())
    assert sum(sizes) == 4 and len(sizes) <= 2
    assert len(store.records(5)) == 4


def test_a_cancelled_caller_still_has_its_record_written(store):
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    assert store.reserve(5, "hk1", "inpaint", 10)
    recorder = Recorder(store)

    async def main():
        task = asyncio.create_task(recorder.finish(rec(units=7.0), 10))
        await asyncio.sleep(0)  # queued
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await recorder.finish(rec(units=0.0), 0)  # the batch after it has been written too

    asyncio.run(main())
    assert sorted(r.units for r in store.records(5)) == [0.0, 7.0]
    assert store.spent(5)[("hk1", "inpaint")][1] == 7.0


def test_records_queued_when_the_loop_closes_are_written_by_flush(store):
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    recorder = Recorder(store)

    async def main():
        tasks = [asyncio.create_task(recorder.finish(rec(), 10)) for _ in range(3)]
        await asyncio.sleep(0)  # queued, the writer not started
        assert recorder._writer is not None
        recorder._writer.cancel()  # as asyncio.run does to every task left when it ends
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        recorder.flush()  # what Validator.close does

    asyncio.run(main())
    assert len(store.records(5)) == 3


def test_records_the_store_refuses_wait_in_the_journal_and_are_written_back_in_order(store):
    """The store refuses every write for a while (the driver's own error: a full disk, a
    database away): each caller is answered at once, new requests are refused admission, and
    once the store is back every record is written, in the order the requests ended, so that
    ``used == Σ records``."""
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    for _ in range(12):
        assert store.reserve(5, "hk1", "inpaint", 10)
    flaky = make_flaky(store)
    recorder = Recorder(store, retry_s=0.05)

    async def main():
        assert recorder.admits()
        flaky.refusing = True
        first = await asyncio.gather(*(recorder.finish(rec(units=float(i)), 10) for i in range(4)))
        assert first == [None] * 4 and not recorder.admits()
        later = [await recorder.finish(rec(units=float(i)), 10) for i in range(4, 8)]
        assert later == [None] * 4 and len(recorder.journal) == 8
        flaky.refusing = False
        after = await asyncio.gather(*(recorder.finish(rec(units=float(i)), 10)
                                       for i in range(8, 12)))
        await asyncio.wait_for(recorder.drained(), 30)
        return after

    after = asyncio.run(main())
    assert flaky.refused > 0 and recorder.admits()
    assert {period for _, period in after} == {5}
    by_id = stored(store)
    assert [by_id[i] for i in sorted(by_id)] == [float(i) for i in range(12)]  # in order
    (used, recorded), = used_and_records(store, 5).values()
    assert used == recorded == sum(range(12))


def test_a_record_beyond_the_journal_bound_is_lost_and_its_reservation_stays(store):
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    for _ in range(3):
        assert store.reserve(5, "hk1", "inpaint", 10)
    flaky = make_flaky(store)
    recorder = Recorder(store, journal=Journal(bound=2), retry_s=0.05)

    async def main():
        flaky.refusing = True
        outcomes = await asyncio.gather(*(recorder.finish(rec(units=6.0), 10) for _ in range(3)),
                                        return_exceptions=True)
        flaky.refusing = False
        await asyncio.wait_for(recorder.drained(), 30)
        return outcomes

    outcomes = asyncio.run(main())
    assert outcomes[:2] == [None, None] and isinstance(outcomes[2], StorageError)
    assert "journal is full" in str(outcomes[2]) and recorder.journal.dropped == 1
    (used, recorded), = used_and_records(store, 5).values()
    assert recorded == 12.0 and used == 12.0 + 10  # under-spent by the lost one, never over


def test_a_full_sqlite_file_keeps_the_records_until_it_has_space_again(tmp_path):
    """SQLite's own SQLITE_FULL ("database or disk is full", as on a full disk): the period's
    reservations were made, the records of the requests ending meanwhile wait in the journal, and
    the file takes them once it may grow again."""
    from core.storage import open_store

    store = open_store(str(tmp_path / "v.sqlite3"))
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    for _ in range(90):
        assert store.reserve(5, "hk1", "inpaint", 10)
    pages = store.db.execute("PRAGMA page_count")[0][0]
    store.db.execute(f"PRAGMA max_page_count={pages}")  # the file may not grow: fill it
    with pytest.raises(StorageError, match="database or disk is full"):
        for _ in range(100_000):
            record(store, rec(units=0.0))  # records of nothing: Σ units stays as it is
    recorder = Recorder(store, retry_s=0.05)

    async def main():
        outcomes = await asyncio.gather(*(recorder.finish(rec(units=6.0), 10) for _ in range(90)))
        served = [r for r in store.records(5) if r.units > 0]
        full = (outcomes.count(None), recorder.admits(), store.spent(5), served)
        store.db.execute("PRAGMA max_page_count=1073741823")  # space again
        await asyncio.wait_for(recorder.drained(), 30)
        return full

    journaled, admitted, spent, served = asyncio.run(main())
    assert journaled == 90 and not admitted and served == []
    assert spent[("hk1", "inpaint")][1] == 900.0  # every reservation still stands
    (used, recorded), = used_and_records(store, 5).values()
    assert used == recorded == 90 * 6.0
    assert sum(r.units > 0 for r in store.records(5)) == 90
    store.close()


@pytest.mark.parametrize("n", [1, 7])
def test_ids_follow_their_callers(store, n):
    """Each caller gets its own record's id: the units it wrote are the ones stored there."""
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    recorder = Recorder(store)

    async def main():
        return await asyncio.gather(*(recorder.finish(rec(units=float(i)), i) for i in range(n)))

    written = asyncio.run(main())
    by_id = stored(store)
    assert [by_id[i] for i, _ in written] == [float(i) for i in range(n)]


@pytest.mark.process
def test_records_ending_in_a_postgresql_outage_are_written_once_it_is_back():
    """A real outage: the private server is stopped while requests are in flight and started
    again; their records wait in the journal meanwhile, and ``used == Σ records`` after it."""
    import shlex
    import subprocess
    from pathlib import Path

    from core.storage import open_store
    from devtools.localpg import _as_owner, binaries_present, postgres_server

    if not binaries_present():
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    with postgres_server() as dsn:
        store = open_store(dsn)
        data = store.db.execute("SHOW data_directory")[0][0]
        argv = shlex.split(Path(data, "postmaster.opts").read_text())[1:]  # as it was started
        options = " ".join(shlex.quote(a) for a in argv)

        def pg_ctl(*args: str) -> None:  # its log in a file: the server holds no pipe of ours
            subprocess.run(_as_owner(["pg_ctl", "-D", data, "-w", "-l",
                                      str(Path(data).parent / "log"), *args]),
                           check=True, capture_output=True, timeout=120)

        store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
        for _ in range(6):
            assert store.reserve(5, "hk1", "inpaint", 10)
        recorder = Recorder(store, retry_s=0.2)

        async def main():
            await asyncio.to_thread(pg_ctl, "-m", "fast", "stop")
            ended = await asyncio.gather(*(recorder.finish(rec(units=6.0), 10) for _ in range(6)))
            refusing = not recorder.admits()
            await asyncio.to_thread(pg_ctl, "-o", options, "start")
            await asyncio.wait_for(recorder.drained(), 120)
            return ended, refusing

        try:
            ended, refusing = asyncio.run(main())
            assert ended == [None] * 6 and refusing and recorder.admits()
            (used, recorded), = used_and_records(store, 5).values()
            assert used == recorded == 36.0
        finally:
            store.close()
