"""The project's one exception tree. Every error a room raises on purpose derives from one of
three kinds, so a caller decides what to do by kind, not by module:

- ``PeerFault``: a peer (a miner, another validator, an API client, a worker) sent something
  outside the protocol. It is that peer's doing: scored or answered as its failure and logged
  in one line naming it, never with a traceback. ``Refusal`` is the case with an HTTP status
  to answer (a request refused before any work).
- ``Unavailable``: something this process relies on is away for now (the chain, the store, a
  miner's workers, the subnet's capacity). Nobody's fault yet: try again later, answer 503.
- ``SetupError``: what the operator gave cannot work (flags, the capacity YAML, a tokenizer, a
  local subnet's folder). The message names what to fix; the process stops with status 1.
"""

from __future__ import annotations


class Sn19Error(Exception):
    """Base of every error this project raises on purpose."""


class PeerFault(Sn19Error):
    """A peer sent something outside the protocol: its failure, the message says how."""


class Refusal(PeerFault):
    """A request refused before any work: ``status`` is the HTTP status to answer with,
    ``headers`` any to send with it (``Retry-After``), ``detail`` a malformed request's
    validation errors."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None,
                 detail: list | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers, self.detail = status, reason, headers, detail


class Unavailable(Sn19Error):
    """Something this process relies on is away for now; the same call may succeed later."""


class SetupError(Sn19Error):
    """The operator's configuration cannot work as given; the message says what to fix."""
