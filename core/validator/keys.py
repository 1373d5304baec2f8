"""API keys for the organic API: random tokens shown once, stored only as their SHA-256 (a leaked
database reveals no key), each with its own rate limit, revocable; and the per-key limiter."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from core.storage import Store

PREFIX = "sn19-"


@dataclass(frozen=True)
class ApiKey:
    name: str
    prefix: str  # the first characters, to tell keys apart in lists and logs
    per_minute: int
    created_at: float
    revoked_at: float | None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(store: Store, name: str, per_minute: int = 60) -> str:
    """A new key for ``name``; the only time the key itself is known."""
    if per_minute < 1:
        raise ValueError("the rate limit must be at least 1 request a minute")
    key = PREFIX + secrets.token_urlsafe(32)
    if not store.add_api_key(name, key[:12], digest(key), per_minute, time.time()):
        raise ValueError(f"a key named {name!r} exists already")
    return key


def revoke(store: Store, name: str) -> bool:
    return store.revoke_api_key(name, time.time())


def find(store: Store, key: str) -> ApiKey | None:
    """The live key matching ``key``, or None (unknown or revoked)."""
    rows = store.api_keys(digest(key))
    return ApiKey(*rows[0]) if rows else None


def listing(store: Store) -> list[ApiKey]:
    return [ApiKey(*r) for r in store.api_keys()]


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to that many."""

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: ApiKey, now: float | None = None) -> float:
        """0 when the request may go, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        rate = key.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key.name, (float(key.per_minute), now))
            tokens = min(float(key.per_minute), tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[key.name] = (tokens - 1, now)
                return 0.0
            self._buckets[key.name] = (tokens, now)
            return (1 - tokens) / rate
