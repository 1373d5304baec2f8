"""Chain access (docs/protocol.md §10): bittensor's ``Client`` behind ``SubtensorChain``, the
one adapter every neuron, the local subnet and every test use. ``connect`` picks the backend: a
node (finney, test, local, ws(s)://) or a local subnet folder (``local:PATH``), whose chain is a
``bittensor`` ``Substrate`` kept in files (core/localchain)."""

from __future__ import annotations

from core.chain.errors import ChainError, RateLimited
from core.chain.subtensor import SubtensorChain, WeightRules, WeightsSent
from core.metagraph import Metagraph, Neuron

__all__ = ["ChainError", "Metagraph", "Neuron", "RateLimited", "SubtensorChain", "WeightRules",
           "WeightsSent", "connect"]


def connect(network: str, netuid: int, *, fallbacks: list[str] | None = None,
            archives: list[str] | None = None) -> SubtensorChain:
    """A chain client: ``local:PATH`` for a local subnet folder, else a bittensor network name
    or a ws(s):// endpoint, with ``fallbacks`` and ``archives`` (None: bittensor's public pools
    for a named network, none for an endpoint)."""
    if network.startswith("local:"):
        from core.localchain import FolderSubstrate, LedgerError

        try:
            substrate = FolderSubstrate(network.removeprefix("local:"))
        except LedgerError as e:
            raise ChainError(str(e)) from None
        return SubtensorChain("local", netuid, substrate=substrate)
    return SubtensorChain(network, netuid, fallback_endpoints=fallbacks,
                          archive_endpoints=archives)
