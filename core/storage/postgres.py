"""PostgreSQL through psycopg 3: the same statements as SQLite, with ``?`` turned into ``%s``."""

from __future__ import annotations

import threading
import zlib
from contextlib import contextmanager

import psycopg

from core.storage.store import StorageError


class PostgresDatabase:
    auto_id = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    row_lock = " FOR SHARE"  # waits for a concurrent seal of the period (READ COMMITTED)
    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, dsn: str):
        shown = psycopg.conninfo.conninfo_to_dict(dsn)
        shown.pop("password", None)  # the name appears in logs and errors: never the password
        self.name = psycopg.conninfo.make_conninfo("", **shown)
        try:
            self._db = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise StorageError(f"{self.name}: cannot connect: {e}") from None
        self._lock = threading.RLock()
        self._dsn = dsn

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

    def lease(self, name: str) -> AdvisoryLease:
        return AdvisoryLease(self._dsn, name)


class AdvisoryLease:
    """Exclusive work among processes sharing the database (the period loop): a session-level
    advisory lock, held on a connection of its own for as long as that connection lives. When the
    holder dies its connection closes and the lock is free at once; when its host vanishes, the
    keepalives set here let the server drop the session within about 11 s."""

    def __init__(self, dsn: str, name: str):
        self._dsn, self._key = dsn, zlib.crc32(name.encode())
        self._conn: psycopg.Connection | None = None
        self._held = False

    def acquire(self) -> bool:
        """Take the lease if it is free (False when another process holds it, or on errors)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10,
                                             keepalives=1, keepalives_idle=5,
                                             keepalives_interval=2, keepalives_count=3)
                for setting in ("tcp_keepalives_idle = 5", "tcp_keepalives_interval = 2",
                                "tcp_keepalives_count = 3"):
                    self._conn.execute(f"SET {setting}")
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            self._held = bool(row and row[0])
            return self._held
        except psycopg.Error:
            self.release()
            return False

    def held(self) -> bool:
        """Whether the lock was taken and its connection still answers (the lock lives as long
        as it does)."""
        if not self._held or self._conn is None:
            return False
        try:
            return self._conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            self.release()
            return False

    def release(self) -> None:
        self._held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
