"""Records of finished requests, written in batches (group commit): a request's record and the
settlement of its reservation wait for one transaction, in a thread of the store, that holds
every record finished meanwhile. While one batch is written the next gathers, so requests
ending together (an audit window ends thousands a second) share a commit and a trip to the
thread instead of one each, and on SQLite the writing runs beside the event loop (the sqlite3
module releases the GIL while it works).

What the validator guarantees stays: ``finish`` returns once the record is stored, and a caller
cancelled while it waits still has its record written (by the batch it is in, or at once when
the event loop is closing).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from core.records import RequestRecord
from core.storage import StorageError, Store

log = logging.getLogger(__name__)


@dataclass
class _Finished:
    record: RequestRecord
    reserved: float
    # (record id, period recorded in), or the error that kept the batch from being stored
    written: asyncio.Future[tuple[int, int] | StorageError]


class Recorder:
    def __init__(self, store: Store):
        self.store = store
        self._queue: list[_Finished] = []
        self._writer: asyncio.Task[None] | None = None

    async def finish(self, record: RequestRecord, reserved: float) -> tuple[int, int]:
        """Store ``record`` and settle the ``reserved`` units it held (``Store.finish_request``):
        (record id, period recorded in). Raises StorageError when its batch was not stored."""
        finished = _Finished(record, reserved, asyncio.get_running_loop().create_future())
        self._queue.append(finished)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        outcome = await asyncio.shield(finished.written)  # cancelled, its record still goes
        if isinstance(outcome, StorageError):
            raise outcome
        return outcome

    async def _write(self) -> None:
        """Write what is queued, a batch per transaction, until nothing is (records that finish
        while a batch is written form the next)."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                pairs = [(f.record, f.reserved) for f in batch]
                try:
                    written = await self.store.off_loop(self.store.finish_requests, pairs)
                except Exception as e:  # every caller hears of it: none waits forever
                    if not isinstance(e, StorageError):
                        log.exception("request records not written")
                        e = StorageError(f"{type(e).__name__}: {e}")
                    _settle(batch, [e] * len(batch))
                else:
                    _settle(batch, written)
        finally:
            if self._queue:  # cancelled: the event loop is closing
                self.flush()

    def flush(self) -> None:
        """Write what is queued now, blocking the caller: for an event loop that is closing
        (``Validator.close``), where no batch would run any more."""
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            _settle(batch, self.store.finish_requests([(f.record, f.reserved) for f in batch]))
        except StorageError as e:
            log.error("%d request records not written: %s", len(batch), e)
            _settle(batch, [e] * len(batch))


def _settle(batch: list[_Finished], outcomes: list) -> None:
    for finished, outcome in zip(batch, outcomes, strict=True):
        if not finished.written.done():
            finished.written.set_result(outcome)
