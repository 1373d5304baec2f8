"""What the validator stores, over either database, as one object made of rooms by domain:
periods and their budgets (``periods``), request records (``records``), window reports
(``reports``), contender states and weights (``states``), API keys (``keys``), the processes
sharing its windows (``senders``). Every write
commits before it returns.

Its methods block (a local file, or a round trip across a network): threads and tests call them
as they are; a coroutine reaches them only through ``core.storage.aio.AsyncStore``, which runs
each in one of the store's threads (``Store.io``)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from core.storage.base import Database, Lease, StorageError
from core.storage.keys import ApiKey, KeyRoom
from core.storage.periods import PeriodInfo, PeriodRoom
from core.storage.records import RecordRoom
from core.storage.reports import ReportRoom
from core.storage.schema import MIGRATIONS
from core.storage.senders import SenderRoom
from core.storage.states import STATE_VERSION, StateRoom

__all__ = ["STATE_VERSION", "ApiKey", "Database", "PeriodInfo", "StorageError", "Store"]

T = TypeVar("T")


class Store(PeriodRoom, RecordRoom, ReportRoom, StateRoom, KeyRoom, SenderRoom):
    def __init__(self, db: Database):
        self.db = db
        self.member = uuid.uuid4().hex
        self.holds = itertools.count(1)  # the numbers of this process's holds (``reserve``)
        self.version = self.migrate()
        self._threads: ThreadPoolExecutor | None = None

    async def io(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)``, a call of this store, in one of its threads (as many as the database
        takes calls at once): on SQLite too, where a commit is ~20 µs until the disk is busy or
        another process holds the lock (then up to its 5 s busy timeout), and a read of a period
        takes a second; the sqlite3 module and psycopg let the event loop run while they wait. A
        caller cancelled while it waits leaves the call to finish: a record is still written."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.db.pool_size, thread_name_prefix="store")
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; returns the schema version."""
        with self._guard():
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = self.db.execute("SELECT MAX(version) FROM schema_version")
            version = rows[0][0] or 0
            if version > len(MIGRATIONS):
                raise StorageError(f"{self.db.name}: schema v{version} is newer than this code "
                                   f"(v{len(MIGRATIONS)}); upgrade the validator")
            for i in range(version, len(MIGRATIONS)):
                with self.db.transaction():
                    for statement in MIGRATIONS[i]:
                        self.db.execute(statement.replace("{id}", self.db.auto_id))
                    self.db.execute("INSERT INTO schema_version VALUES (?)", (i + 1,))
        return len(MIGRATIONS)

    def lease(self, name: str) -> Lease:
        """The lease named ``name`` among the processes sharing this database."""
        return self.db.lease(name)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)  # the calls under way end (their records written)
        self.db.close()
