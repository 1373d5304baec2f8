"""Who may call a miner (SPEC §6): a valid btauth/1 signature addressed to this miner (else 401),
from a registered validator with a permit and the minimum stake (else 403)."""

from __future__ import annotations

from collections.abc import Mapping

from bittensor import http_auth

from core.chain import Metagraph, Neuron

# Entries must outlive the freshness window (max_age + allowed skew).
NONCE_RETENTION_S = 60.0


class Refused(Exception):
    """A request refused before any work: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Gate:
    def __init__(self, my_hotkey: str, *, min_stake: float = 0.0,
                 max_age_s: float = http_auth.DEFAULT_MAX_AGE,
                 nonce_store: http_auth.NonceStore | None = None):
        self.my_hotkey = my_hotkey
        self.min_stake = min_stake
        self.max_age_s = max_age_s
        self.nonce_store = nonce_store or http_auth.InMemoryNonceStore(NONCE_RETENTION_S)

    def admit(self, headers: Mapping[str, str], body: bytes, method: str, path: str,
              metagraph: Metagraph) -> Neuron:
        """The calling validator's neuron, or Refused(401 | 403)."""
        try:
            caller = http_auth.verify(
                headers, body, method=method, path=path, self_hotkey_ss58=self.my_hotkey,
                max_age=self.max_age_s, nonce_store=self.nonce_store,
            )
        except http_auth.AuthError as e:
            raise Refused(401, f"{type(e).__name__}: {e}") from None
        neuron = metagraph.by_hotkey(caller.hotkey_ss58)
        if neuron is None:
            raise Refused(403, "caller is not registered on this subnet")
        if not neuron.validator_permit:
            raise Refused(403, "caller has no validator permit")
        if neuron.stake < self.min_stake:
            raise Refused(403, f"caller's stake {neuron.stake:g} is below the minimum {self.min_stake:g}")
        return neuron
