"""API keys for the organic API: random tokens shown once, stored only as their SHA-256 (a leaked
database reveals no key), each with its own rate limit, revocable; and the per-key limiter."""

from __future__ import annotations

import hashlib
import secrets
import time

from core.storage import Store
from core.storage.store import ApiKey

__all__ = ["ApiKey", "RateLimiter", "create", "find", "listing", "revoke"]

PREFIX = "sn19-"
MAX_NAME = 64  # characters of a key's name: it is stored, logged and listed


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(store: Store, name: str, per_minute: int = 60) -> str:
    """A new key for ``name``; the only time the key itself is known."""
    if per_minute < 1:
        raise ValueError("the rate limit must be at least 1 request a minute")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"a key's name has 1 to {MAX_NAME} characters, not {len(name)}")
    key = PREFIX + secrets.token_urlsafe(32)
    if not store.add_api_key(name, key[:12], digest(key), per_minute, time.time()):
        raise ValueError(f"a key named {name!r} exists already")
    return key


def revoke(store: Store, name: str) -> bool:
    return store.revoke_api_key(name, time.time())


def find(store: Store, key: str) -> ApiKey | None:
    """The live key matching ``key``, or None (unknown or revoked)."""
    found = store.api_keys(digest(key))
    return found[0] if found else None


def listing(store: Store) -> list[ApiKey]:
    return store.api_keys()


class RateLimiter:
    """``per_minute`` requests per key in each minute of the clock, counted in the store: API
    replicas on one database share the count, so a key gets its limit once, not once per
    replica."""

    def __init__(self, store):
        self.store = store

    def allow(self, key: ApiKey, now: float | None = None) -> float:
        """0 when the request may go, else the seconds until it may."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        if self.store.count_api_use(key.name, minute) <= key.per_minute:
            return 0.0
        return (minute + 1) * 60 - now
