"""Who may call a miner (docs/protocol.md §7): a valid btauth/1 signature addressed to this miner
(else 401), from a registered validator with a permit and the minimum stake (else 403)."""

from __future__ import annotations

from collections.abc import Mapping

from bittensor import http_auth

from core.errors import Refusal
from core.metagraph import Metagraph, Neuron

# Entries must outlive the freshness window (max_age + allowed skew).
NONCE_RETENTION_S = 60.0


class Gate:
    def __init__(self, my_hotkey: str, *, min_stake: float = 0.0,
                 max_age_s: float = http_auth.DEFAULT_MAX_AGE,
                 nonce_store: http_auth.NonceStore | None = None, validators_only: bool = True):
        """``validators_only=False``: any registered hotkey may call (a miner reading its own
        feedback), its stake and permit aside."""
        self.my_hotkey = my_hotkey
        self.min_stake = min_stake
        self.validators_only = validators_only
        self.max_age_s = max_age_s
        self.nonce_store = nonce_store or http_auth.InMemoryNonceStore(NONCE_RETENTION_S)

    def screen(self, headers: Mapping[str, str], metagraph: Metagraph) -> Neuron:
        """What the headers alone decide, before a byte of the body is read: btauth/1 headers
        present (else 401), and the hotkey they claim a registered validator with a permit and
        the minimum stake (else 403)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        if (lowered.get(http_auth.HEADER_VERSION.lower()) != http_auth.VERSION
                or not lowered.get(http_auth.HEADER_SIGNATURE.lower())):
            raise Refusal(401, "MalformedAuth: missing or unsupported btauth/1 headers")
        hotkey = lowered.get(http_auth.HEADER_HOTKEY.lower(), "")
        neuron = metagraph.by_hotkey(hotkey) if hotkey else None
        if neuron is None:
            raise Refusal(403, "caller is not registered on this subnet")
        if not self.validators_only:
            return neuron
        if not neuron.validator_permit:
            raise Refusal(403, "caller has no validator permit")
        if neuron.stake < self.min_stake:
            raise Refusal(403, f"caller's stake {neuron.stake:g} is below the minimum "
                               f"{self.min_stake:g}")
        return neuron

    def admit(self, headers: Mapping[str, str], body: bytes, method: str, target: str,
              metagraph: Metagraph) -> Neuron:
        """The calling validator's neuron, or Refusal(401 | 403). ``target`` is the request
        target as sent (raw path and query): the signature covers exactly that. The nonce is
        stored only once the signature verifies and the signer is a validator, so no other
        signer can fill the store."""
        return self.verify(self.screen(headers, metagraph), headers, body, method, target)

    def verify(self, neuron: Neuron, headers: Mapping[str, str], body: bytes, method: str,
               target: str) -> Neuron:
        """``admit`` for a caller ``screen`` has passed already (its neuron)."""
        pending = _Pending(self.nonce_store)
        try:
            http_auth.verify(headers, body, method=method, path=target,
                             self_hotkey_ss58=self.my_hotkey, max_age=self.max_age_s,
                             nonce_store=pending)
        except http_auth.AuthError as e:
            raise Refusal(401, f"{type(e).__name__}: {e}") from None
        if not self.nonce_store.check_and_store(*pending.seen):
            raise Refusal(401, "ReplayedRequest: this nonce was already accepted from this hotkey")
        return neuron


class _Pending:
    """verify()'s replay check, held back: it notes the (hotkey, nonce) to store once the
    caller is admitted."""

    def __init__(self, store: http_auth.NonceStore):
        self.retention = getattr(store, "retention", None)  # verify checks it covers its window
        self.seen: tuple[str, int] = ("", 0)

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        self.seen = (hotkey_ss58, nonce_ns)
        return True
