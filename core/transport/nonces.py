"""Replay protection that survives restarts: the (hotkey, nonce) pairs a miner accepted, in a
small SQLite file, kept past the freshness window. A request captured and replayed right after
a miner restarts is refused as it would be before (bittensor's default store forgets them)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from core.transport.auth import NONCE_RETENTION_S


class SqliteNonceStore:
    def __init__(self, path: str | Path, retention: float = NONCE_RETENTION_S):
        self.retention = retention  # bittensor checks it covers the freshness window
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # others may not read it
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS nonces (hotkey TEXT NOT NULL, nonce INTEGER "
                         "NOT NULL, expires REAL NOT NULL, PRIMARY KEY (hotkey, nonce)) "
                         "WITHOUT ROWID")
        self._lock = threading.Lock()
        self._pruned = 0.0

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        """True (and remembered) the first time a pair is seen inside the retention, else False."""
        now = time.time()  # wall clock: it has to mean the same after a restart
        with self._lock:
            if now - self._pruned > 5:
                self._db.execute("DELETE FROM nonces WHERE expires < ?", (now,))
                self._pruned = now
            cur = self._db.execute("INSERT OR IGNORE INTO nonces VALUES (?, ?, ?)",
                                   (hotkey_ss58, nonce_ns, now + self.retention))
            return cur.rowcount == 1
