"""PostgreSQL through psycopg 3: the same statements as SQLite, with ``?`` turned into ``%s``."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import psycopg

from core.storage.store import StorageError


class PostgresDatabase:
    dialect = "postgresql"
    auto_id = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    errors = (psycopg.Error,)

    def __init__(self, dsn: str):
        shown = psycopg.conninfo.conninfo_to_dict(dsn)
        shown.pop("password", None)  # the name appears in logs and errors: never the password
        self.name = psycopg.conninfo.make_conninfo(**shown)
        try:
            self._db = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise StorageError(f"{self.name}: cannot connect: {e}") from None
        self._lock = threading.RLock()

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            cur = self._db.execute(self._sql(sql), args)
            return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._lock, self._db.cursor() as cur:
            cur.executemany(self._sql(sql), rows)

    @contextmanager
    def transaction(self):
        with self._lock, self._db.transaction():
            yield

    def close(self) -> None:
        with self._lock:
            self._db.close()
