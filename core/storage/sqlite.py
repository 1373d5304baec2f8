"""SQLite storage (the default: one file, no server). WAL journal; every write commits, so a
killed validator loses nothing it recorded."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path

from core.plan import Target
from core.records import Outcome, RequestRecord
from core.scoring import ContenderState, PeriodOutcome

# Each migration moves the schema one version up; never edit one that has shipped.
MIGRATIONS = (
    """
    CREATE TABLE periods (
        period INTEGER PRIMARY KEY, block INTEGER NOT NULL, block_hash TEXT NOT NULL,
        share REAL NOT NULL, started_at REAL NOT NULL, finished INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE targets (
        period INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, task TEXT NOT NULL,
        declared REAL NOT NULL, budget REAL NOT NULL, f REAL NOT NULL, audit INTEGER NOT NULL,
        reason TEXT NOT NULL, registered_at INTEGER NOT NULL,
        PRIMARY KEY (period, hotkey, task)
    );
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY, period INTEGER NOT NULL, hotkey TEXT NOT NULL, task TEXT NOT NULL,
        organic INTEGER NOT NULL, outcome TEXT NOT NULL, units REAL NOT NULL,
        latency_s REAL NOT NULL, quality REAL, at REAL NOT NULL
    );
    CREATE INDEX requests_period ON requests (period, hotkey, task);
    CREATE TABLE states (
        hotkey TEXT NOT NULL, task TEXT NOT NULL, period INTEGER NOT NULL, state TEXT NOT NULL,
        PRIMARY KEY (hotkey, task)
    );
    CREATE TABLE weights_set (block INTEGER NOT NULL, at REAL NOT NULL, weights TEXT NOT NULL);
    """,
)


class StorageError(Exception):
    pass


class SqliteStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: cannot open the database: {e}") from None
        self._lock = threading.Lock()
        self.migrate()

    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StorageError(f"{self.path}: schema v{version} is newer than this code "
                                   f"(v{len(MIGRATIONS)}); upgrade the validator")
            for i in range(version, len(MIGRATIONS)):
                self._db.executescript(f"BEGIN; {MIGRATIONS[i]}; PRAGMA user_version={i + 1}; COMMIT;")
            return len(MIGRATIONS)

    def _write(self, sql: str, rows: list[tuple] | tuple = ()) -> None:
        with self._lock:
            try:
                if isinstance(rows, list):
                    self._db.execute("BEGIN")
                    self._db.executemany(sql, rows)
                    self._db.execute("COMMIT")
                else:
                    self._db.execute(sql, rows)
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StorageError(f"{self.path}: write failed: {e}") from None

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- periods and their plans --

    def begin_period(self, period: int, block: int, block_hash: str, share: float,
                     started_at: float, targets: list[Target]) -> None:
        self._write("INSERT OR IGNORE INTO periods VALUES (?, ?, ?, ?, ?, 0)",
                    (period, block, block_hash, share, started_at))
        self._write(
            "INSERT OR REPLACE INTO targets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(period, t.contender.uid, t.contender.hotkey, t.contender.task, t.contender.declared,
              t.contender.budget, t.f, int(t.audit), t.reason, t.contender.registered_at)
             for t in targets],
        )

    def period(self, period: int) -> dict | None:
        rows = self._read("SELECT block, block_hash, share, started_at, finished FROM periods "
                          "WHERE period = ?", (period,))
        if not rows:
            return None
        block, block_hash, share, started_at, finished = rows[0]
        return {"block": block, "block_hash": block_hash, "share": share,
                "started_at": started_at, "finished": bool(finished)}

    def targets(self, period: int) -> list[tuple]:
        """(uid, hotkey, task, declared, budget, f, audit, reason, registered_at) rows."""
        return self._read("SELECT uid, hotkey, task, declared, budget, f, audit, reason, "
                          "registered_at FROM targets WHERE period = ? ORDER BY uid, task", (period,))

    def last_finished(self) -> int | None:
        return self._read("SELECT MAX(period) FROM periods WHERE finished = 1")[0][0]

    # -- requests --

    def record(self, r: RequestRecord) -> None:
        self._write("INSERT INTO requests (period, hotkey, task, organic, outcome, units, "
                    "latency_s, quality, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.period, r.hotkey, r.task, int(r.organic), r.outcome.value, r.units,
                     r.latency_s, r.quality, r.at))

    def records(self, period: int) -> list[RequestRecord]:
        rows = self._read("SELECT period, hotkey, task, organic, outcome, units, latency_s, "
                          "quality, at FROM requests WHERE period = ? ORDER BY id", (period,))
        return [RequestRecord(p, h, t, bool(o), Outcome(out), u, lat, q, at)
                for p, h, t, o, out, u, lat, q, at in rows]

    # -- contender states --

    def finish_period(self, period: int, states: dict[tuple[str, str], ContenderState]) -> None:
        """Store every contender's new state and mark the period done, in one transaction."""
        rows = [(hk, task, period, json.dumps(asdict(s))) for (hk, task), s in states.items()]
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?, ?)", rows)
                self._db.execute("UPDATE periods SET finished = 1 WHERE period = ?", (period,))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK")
                raise StorageError(f"{self.path}: write failed: {e}") from None

    def states(self) -> dict[tuple[str, str], ContenderState]:
        out = {}
        for hotkey, task, raw in self._read("SELECT hotkey, task, state FROM states"):
            d = json.loads(raw)
            d["since_audit"] = tuple(tuple(x) for x in d["since_audit"])
            d["window"] = tuple(PeriodOutcome(**o) for o in d["window"])
            out[(hotkey, task)] = ContenderState(**d)
        return out

    # -- weights --

    def note_weights(self, block: int, at: float, weights: dict[int, float]) -> None:
        self._write("INSERT INTO weights_set VALUES (?, ?, ?)", (block, at, json.dumps(weights)))

    def last_weights_block(self) -> int | None:
        return self._read("SELECT MAX(block) FROM weights_set")[0][0]

    def prune(self, before_period: int) -> None:
        """Drop request records and plans older than the retention window."""
        for table in ("requests", "targets", "periods"):
            self._write(f"DELETE FROM {table} WHERE period < ?", (before_period,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
