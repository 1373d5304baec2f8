"""Records written in batches (core/validator/recorder.py), on SQLite and on a real PostgreSQL
server: requests ending together share one transaction, every caller learns its record's id and
period (or the error), and a record is written whatever happens to its caller."""

import asyncio
import contextlib

import pytest

from core.budget import Contender
from core.records import Outcome, RequestRecord
from core.storage import StorageError
from core.validator.recorder import Recorder

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


def test_a_batch_the_store_refuses_fails_every_caller_and_none_waits_forever(tmp_path):
    from core.storage import open_store

    store = open_store(str(tmp_path / "v.sqlite3"))
    store.begin_period(5, 1500, "0x", 1.0, 0.0, TARGETS)
    recorder = Recorder(store)
    store.db.execute("DROP TABLE requests")  # every insert now fails

    async def main():
        return await asyncio.wait_for(asyncio.gather(
            *(recorder.finish(rec(), 10) for _ in range(3)), return_exceptions=True), 30)

    outcomes = asyncio.run(main())
    assert len(outcomes) == 3 and all(isinstance(o, StorageError) for o in outcomes)
    assert all("requests" in str(o) for o in outcomes)
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
