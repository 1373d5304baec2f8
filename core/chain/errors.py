"""The project's one chain error: whatever the chain client raised (a refusal, a dropped
connection, a timeout, pruned state, a value it could not decode) surfaces as this, so every
caller retries or reports it the same way."""

from __future__ import annotations

from core.errors import Unavailable


class ChainError(Unavailable):
    """The chain cannot be reached or used as asked; the message says which call and why.
    ``name``: the chain's own name for a refusal (``SettingWeightsTooFast``, ...), if any;
    ``final``: the same call would fail again (a refusal by the chain's rules, or a submission
    whose fate is unknown), unlike a lost connection or a transaction the pool dropped."""

    def __init__(self, message: str, name: str | None = None, final: bool = False):
        super().__init__(message)
        self.name = name
        self.final = final


class RateLimited(ChainError):
    """Refused by a rate limit (weights, serving): retrying before it lapses is refused again."""
