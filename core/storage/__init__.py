"""The validator's database: request records, period plans and contender states, in a versioned
schema, so that a restart loses nothing. SQLite by default (a file, no server); PostgreSQL when
given a DSN (several API replicas can then share one database). Threads use ``Store``;
coroutines ``AsyncStore``."""

from __future__ import annotations

from pathlib import Path

from core.storage.aio import AsyncStore
from core.storage.store import StorageError, Store

__all__ = ["AsyncStore", "Store", "StorageError", "open_store"]


def open_store(target: str) -> Store:
    """``postgresql://...`` opens PostgreSQL; anything else is a SQLite file path."""
    if target.startswith(("postgresql://", "postgres://")):
        from core.storage.postgres import PostgresDatabase

        return Store(PostgresDatabase(target))
    from core.storage.sqlite import SqliteDatabase

    return Store(SqliteDatabase(Path(target).expanduser()))
