"""PostgreSQL through psycopg 3: the same statements as SQLite, with ``?`` turned into ``%s``."""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from core.storage.base import StorageError

T = TypeVar("T")

POOL_SIZE = 8  # connections: the store's calls that may run at once from one process
POOL_WAIT_S = 10.0  # for a free connection, or for the first one at start-up


class PostgresDatabase:
    """Statements on a pool of connections (psycopg_pool), so that calls from several threads run
    at once (``Store.io`` sends the API's and the senders' calls to threads: a round trip to a
    database across a network never blocks the event loop). A transaction keeps its connection
    for its thread until it ends."""

    auto_id = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    row_lock = " FOR SHARE"  # waits for a concurrent seal of the period (READ COMMITTED)
    errors: tuple[type[Exception], ...] = (psycopg.Error,)  # PoolTimeout is one
    whole = "TRUNC({})"
    writing_with = True
    now = "EXTRACT(EPOCH FROM clock_timestamp())"  # unix time, the database's clock

    def __init__(self, dsn: str, pool_size: int = POOL_SIZE):
        shown = psycopg.conninfo.conninfo_to_dict(dsn)
        shown.pop("password", None)  # the name appears in logs and errors: never the password
        self.name = psycopg.conninfo.make_conninfo("", **shown)
        self.pool_size = pool_size
        try:  # one connection first: the server's own reason when it refuses (a pool only says
            psycopg.connect(dsn, connect_timeout=10).close()  # that it timed out)
        except psycopg.Error as e:
            raise StorageError(f"{self.name}: cannot connect: {e}") from None
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, open=False,
                                    kwargs={"autocommit": True, "connect_timeout": 10},
                                    timeout=POOL_WAIT_S, name="sn19-store")
        try:
            self._pool.open(wait=True, timeout=POOL_WAIT_S)
        except psycopg.Error as e:
            self._pool.close()
            raise StorageError(f"{self.name}: cannot connect: {e}") from None
        self._local = threading.local()  # the connection of this thread's open transaction
        self._dsn = dsn

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    @staticmethod
    def _fetch(conn: psycopg.Connection, sql: str, args: tuple) -> list[tuple]:
        cur = conn.execute(PostgresDatabase._sql(sql), args)
        return cur.fetchall() if cur.description else []

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return self._fetch(conn, sql, args)
        with self._pool.connection() as conn:
            return self._fetch(conn, sql, args)

    def rows(self, sql: str, args: tuple, make: Callable[..., T]) -> list[T]:
        conn = getattr(self._local, "conn", None)
        with nullcontext(conn) if conn is not None else self._pool.connection() as c:
            return [make(*row) for row in c.execute(self._sql(sql), args)]

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        conn = getattr(self._local, "conn", None)
        with (nullcontext(conn) if conn is not None else self._pool.connection()) as c, \
                c.cursor() as cur:
            cur.executemany(self._sql(sql), rows)

    @contextmanager
    def transaction(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # nested: a savepoint on the same connection
            with conn.transaction():
                yield
            return
        with self._pool.connection() as conn, conn.transaction():
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def close(self) -> None:
        self._pool.close()

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
        """Give the lock up at once: unlocked before the connection closes, since the server
        frees a closed session's locks only once it has seen the close (a process taking the
        lease right after could find it still held)."""
        held, self._held = self._held, False
        if self._conn is not None:
            if held:
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
            self._conn.close()
            self._conn = None
