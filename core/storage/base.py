"""What every room of the store stands on: the database seam both dialects fill
(``core.storage.sqlite``, ``core.storage.postgres``), the one error the store raises, and the
base class that runs a statement and turns a driver's error into it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from core.errors import Unavailable

T = TypeVar("T")


class StorageError(Unavailable):
    """The database refused a read or write; the message names it and says why."""


class Lease(Protocol):
    """Work only one process sharing the database may do at a time (the period loop)."""

    def acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...


class Database(Protocol):
    name: str
    auto_id: str
    row_lock: str  # appended to a SELECT that must wait for a concurrent update of its rows
    errors: tuple[type[Exception], ...]
    whole: str  # ``{}`` as a SQL number truncated toward zero to an integer
    # whether a WITH may hold an UPDATE whose rows the statement goes on to use (PostgreSQL):
    # two writes in one statement, one round trip instead of a transaction's four
    writing_with: bool
    now: str  # the database's clock as unix seconds, in SQL: one clock for every process
    pool_size: int  # calls that may run at once from threads (``Store.io``'s threads)

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]: ...

    def rows(self, sql: str, args: tuple, make: Callable[..., T]) -> list[T]:
        """``make(*row)`` of each row, each row dropped once made: a read of many rows never
        holds them all twice (as tuples and as objects), nor leaves the tuples for the garbage
        collector to walk while it holds the GIL."""
        ...

    def executemany(self, sql: str, rows: list[tuple]) -> None: ...

    def transaction(self): ...

    def close(self) -> None: ...

    def lease(self, name: str) -> Lease: ...


class Room:
    """One domain of the store over the shared database (``core.storage.store.Store`` composes
    them); its methods block, so a coroutine reaches them through ``core.storage.aio``."""

    db: Database
    member: str  # this process, as the rows it holds name it: a fresh id each time it starts
    holds: Iterator[int]  # the numbers of its holds, never one twice

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except self.db.errors as e:
            raise StorageError(f"{self.db.name}: {type(e).__name__}: {e}") from None

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._guard():
            return self.db.execute(sql, args)
