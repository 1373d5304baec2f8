"""A local subnet for development and tests: a chain kept in a folder (``ledger``), served to
bittensor's own ``Client`` as a ``Substrate`` (``substrate``), set up through an admin side
(``subnet``). Every neuron reads and writes it through ``core.chain.SubtensorChain``, the
production adapter."""

from core.localchain.ledger import LedgerError
from core.localchain.subnet import LocalSubnet
from core.localchain.substrate import FolderSubstrate

__all__ = ["FolderSubstrate", "LedgerError", "LocalSubnet"]
