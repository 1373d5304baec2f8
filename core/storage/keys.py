"""Organic API keys (only their hashes) and their use per clock minute, shared by every replica
on the database."""

from __future__ import annotations

from dataclasses import dataclass

from core.storage.base import Room


@dataclass(frozen=True)
class ApiKey:
    """An organic API key as stored: never the key itself, only its hash (not returned here)."""

    name: str
    prefix: str  # the first characters, to tell keys apart in lists and logs
    per_minute: int
    created_at: float
    revoked_at: float | None


class KeyRoom(Room):
    _api_use_pruned = -1  # the minute whose predecessors' API use was last dropped

    def add_api_key(self, name: str, prefix: str, digest: str, per_minute: int, at: float) -> bool:
        """False when a key of that name exists already (one statement: two processes creating
        the same name cannot both succeed)."""
        return bool(self._run("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL) "
                              "ON CONFLICT (name) DO NOTHING RETURNING name",
                              (name, prefix, digest, per_minute, at)))

    def revoke_api_key(self, name: str, at: float) -> bool:
        """False when there is no live key of that name."""
        return bool(self._run("UPDATE api_keys SET revoked_at = ? "
                              "WHERE name = ? AND revoked_at IS NULL RETURNING name", (at, name)))

    def api_keys(self, digest: str | None = None) -> list[ApiKey]:
        """Every key, or the live one with this digest."""
        columns = "SELECT name, prefix, per_minute, created_at, revoked_at FROM api_keys"
        if digest is None:
            rows = self._run(f"{columns} ORDER BY created_at")
        else:
            rows = self._run(f"{columns} WHERE hash = ? AND revoked_at IS NULL", (digest,))
        return [ApiKey(*row) for row in rows]

    def count_api_use(self, name: str, minute: int) -> int:
        """Count one request of key ``name`` in ``minute`` (one statement: replicas sharing the
        database count together); returns the minute's count so far, this one included. Past
        minutes are dropped once a minute, not with every request (it was a transaction of
        three statements per organic request)."""
        if minute != self._api_use_pruned:
            self._run("DELETE FROM api_use WHERE minute < ?", (minute - 1,))
            self._api_use_pruned = minute
        rows = self._run("INSERT INTO api_use VALUES (?, ?, 1) ON CONFLICT (name, minute) "
                         "DO UPDATE SET used = api_use.used + 1 RETURNING used", (name, minute))
        return rows[0][0]
