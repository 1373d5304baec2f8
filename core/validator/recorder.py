"""Records of finished requests, written in batches (group commit): a request's record and the
settlement of its reservation wait for one transaction, in a thread of the store, that holds
every record finished meanwhile. While one batch is written the next gathers, so requests
ending together (an audit window ends thousands a second) share a commit and a trip to the
thread instead of one each, and on SQLite the writing runs beside the event loop (the sqlite3
module releases the GIL while it works).

A batch the store refuses (a full disk, a database away) is not lost: it goes to the journal
(``core.validator.journal``), which is written back, oldest first and before anything that ended
after it, every ``retry_s`` until the store takes it. While the journal holds anything the store is
taken to be refusing writes and ``admits`` is False: no new request is sent, so every request
sent has a record that can be kept, and ``used == Σ records`` holds once the store is back.

What the validator guarantees stays: ``finish`` returns once the record is stored or journaled,
and a caller cancelled while it waits still has its record written (by the batch it is in, or at
once when the event loop is closing).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from core.records import RequestRecord
from core.storage import StorageError, Store
from core.validator.journal import Entry, Journal

log = logging.getLogger(__name__)

RETRY_S = 1.0  # between tries of writing the journal back while the store refuses it
CHUNK = 1024  # journal records per transaction when writing it back


@dataclass
class _Finished:
    entry: Entry
    # (record id, period recorded in); None: journaled; the error when it could not be kept
    written: asyncio.Future[tuple[int, int] | None | StorageError]


class Recorder:
    def __init__(self, store: Store, journal: Journal | None = None, retry_s: float = RETRY_S):
        self.store = store
        self.journal = journal if journal is not None else Journal()
        self.retry_s = retry_s
        self._queue: list[_Finished] = []
        self._writer: asyncio.Task[None] | None = None
        self._waiting: list[asyncio.Future[None]] = []  # callers of ``drained``
        self._writing_back = False  # records taken out of the journal are being written

    def admits(self) -> bool:
        """Whether a new request may be sent: the store took the latest records (none waits in
        the journal)."""
        return not (self.journal or self._writing_back)

    async def drained(self) -> None:
        """Wait until the journal is written back (at once when it is empty)."""
        while not self.admits():
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            await waiter

    async def finish(self, record: RequestRecord, reserved: float, held: int | None = None
                     ) -> tuple[int, int] | None:
        """Store ``record`` and settle the ``reserved`` units it held (hold ``held``:
        ``Store.finish_requests``): (record id, period recorded in), or None when the store
        refused it and it waits in the journal. Raises StorageError when the journal is full too
        (the record is lost, its units held until this process is known dead)."""
        finished = _Finished(Entry(record, reserved, held),
                             asyncio.get_running_loop().create_future())
        self._queue.append(finished)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        outcome = await asyncio.shield(finished.written)  # cancelled, its record still goes
        if isinstance(outcome, StorageError):
            raise outcome
        return outcome

    async def _write(self) -> None:
        """Write the journal back, then what is queued, a batch per transaction, until nothing
        is left (records that finish while a batch is written form the next); while the store
        refuses, what is queued joins the journal and the writing is tried again every
        ``retry_s``."""
        try:
            while self._queue or self.journal:
                if self.journal and not await self._write_back():
                    self._to_journal(self._take(), None)
                    await asyncio.sleep(self.retry_s)
                    continue
                batch = self._take()
                if not batch:
                    continue
                try:
                    written = await self.store.io(self.store.finish_requests,
                                                  [f.entry.row() for f in batch])
                except StorageError as e:
                    self._to_journal(batch, e)
                except Exception as e:  # a bug, not the store: every caller hears of it
                    log.exception("request records not written")
                    _settle(batch, [StorageError(f"{type(e).__name__}: {e}")] * len(batch))
                else:
                    _settle(batch, written)
        finally:
            if self._queue or self.journal:  # cancelled: the event loop is closing
                self.flush()

    def _take(self) -> list[_Finished]:
        batch, self._queue = self._queue, []
        return batch

    async def _write_back(self) -> bool:
        """Write the journal back, oldest first; False when the store still refuses it."""
        before = len(self.journal)
        while self.journal:
            # out of the journal while written: a stop meanwhile (``flush``) never writes them
            # twice; the thread writing them finishes whatever becomes of this task
            chunk = self.journal.take(CHUNK)
            self._writing_back = True
            try:
                await self.store.io(self.store.finish_requests, [e.row() for e in chunk])
            except StorageError as e:
                self.journal.put_back(chunk)
                _log_refusal(e, len(self.journal), "still")
                return False
            except Exception:  # a bug, not the store: these records would never go
                log.exception("%d request records lost from the journal", len(chunk))
            finally:
                self._writing_back = False
            self.journal.written()
        log.warning("the store is back: %d request records written from the journal", before)
        self._wake()
        return True

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    def _to_journal(self, batch: list[_Finished], error: StorageError | None) -> None:
        """Keep ``batch`` in the journal and tell its callers so (None), or, beyond its bound,
        that their records are lost (StorageError)."""
        if not batch:
            return
        if error is not None:
            _log_refusal(error, len(self.journal) + len(batch), "now")
        outcomes: list[StorageError | None] = []
        for f in batch:
            kept = self.journal.keep(f.entry)
            outcomes.append(None if kept else StorageError(
                f"the store refused the record and the journal is full ({self.journal.bound})"))
        lost = sum(o is not None for o in outcomes)
        if lost:
            log.error("%d request records lost: the journal is full (%d); their reservations "
                      "stay counted", lost, self.journal.bound)
        _settle(batch, outcomes)

    def flush(self) -> None:
        """Write the journal and what is queued now, blocking the caller: for an event loop that
        is closing (``Validator.close``), where no batch would run any more. What the store
        still refuses is lost with this process (logged); what it held is given back once this
        process is known dead (``core.validator.replica.give_back``)."""
        batch = self._take()
        pending = [*self.journal.take(len(self.journal)), *(f.entry for f in batch)]
        if not pending:
            return
        try:
            written = self.store.finish_requests([e.row() for e in pending])
        except StorageError as e:
            log.error("%d request records not written at the stop: %s", len(pending), e)
            self.journal.put_back(pending[:len(pending) - len(batch)])
            _settle(batch, [e] * len(batch))
            return
        self.journal.written()
        self._wake()
        _settle(batch, written[len(written) - len(batch):])


def _log_refusal(error: StorageError, waiting: int, when: str) -> None:
    log.error("the store %s refuses request records (%s): %d wait in the journal, no new "
              "request is sent until it takes them", when, error, waiting)


def _settle(batch: list[_Finished], outcomes: list) -> None:
    for finished, outcome in zip(batch, outcomes, strict=True):
        if not finished.written.done():
            finished.written.set_result(outcome)
