"""Writing request records in tests as the validator's recorder does (``Store.finish_requests``,
one transaction for the batch), one record at a time."""

from __future__ import annotations

from core.records import RequestRecord
from core.storage import Store


def finish(store: Store, r: RequestRecord, reserved: float, held: int | None = None
           ) -> tuple[int, int]:
    """``r`` stored, settling the ``reserved`` units it held (hold ``held``): (record id,
    period recorded in)."""
    return store.finish_requests([(r, reserved, held)])[0]


def record(store: Store, r: RequestRecord) -> int:
    """``r`` stored as if its units were reserved as they are (nothing to settle): its id."""
    return finish(store, r, r.units)[0]
