"""Records the store refused, kept in memory until it takes them again (``core.validator.recorder``
writes them back, oldest first, before any record that ended after them).

A request is sent only while this journal is empty (``Recorder.admits``): once a write fails, no new
synthetic request starts and organic ones get a fast 503, so only requests already in flight can
land here. Its bound, ``JOURNAL_MAX`` records (a few MB), is far above what can be in flight (the
period loop's ``max_concurrency``, 16,384, plus the API's streams). A record beyond it is not kept:
the caller hears a ``StorageError`` and its reservation stays counted (``used`` then exceeds the
records by its units: the budget is under-spent, never over-spent).

It lives in memory only: a validator stopped or killed while it holds records loses them; their
reservations are held in the store in this process's name and given back once it is known dead
(``core.validator.replica``), so ``used == Σ records`` still holds for the period.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from core.records import RequestRecord

JOURNAL_MAX = 65_536


@dataclass(frozen=True)
class Entry:
    """A finished request to store: its record, the units reserved for it and the id of their
    hold (``Store.reserve``; None for units never reserved in the store)."""

    record: RequestRecord
    reserved: float
    held: int | None = None

    def row(self) -> tuple[RequestRecord, float, int | None]:
        """What ``Store.finish_requests`` takes of it."""
        return self.record, self.reserved, self.held


class Journal:
    def __init__(self, bound: int = JOURNAL_MAX):
        self.bound = bound
        self._entries: deque[Entry] = deque()
        self._out = 0  # entries taken out to be written back: they count against the bound
        self.dropped = 0  # records refused by the bound since this process started

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, entry: Entry) -> bool:
        """Keep ``entry`` after the others; False (and counted) when the journal is full."""
        if len(self._entries) + self._out >= self.bound:
            self.dropped += 1
            return False
        self._entries.append(entry)
        return True

    def take(self, n: int) -> list[Entry]:
        """Take out the ``n`` oldest entries (to write them back; ``put_back`` if refused)."""
        taken = [self._entries.popleft() for _ in range(min(n, len(self._entries)))]
        self._out = len(taken)
        return taken

    def written(self) -> None:
        """The entries taken out last are stored."""
        self._out = 0

    def put_back(self, entries: list[Entry]) -> None:
        """Entries taken out and refused again: the oldest once more, in their order."""
        self._entries.extendleft(reversed(entries))
        self._out = 0
