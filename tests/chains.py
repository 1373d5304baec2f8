"""Local subnets for tests: a chain in ``<folder>/chain`` and real bittensor wallets in a folder
beside it, with validators and miners registered as the tests (and the neurons they start) use
them. ``conftest.make_net`` hands one out in a test's tmp_path; module-scoped fixtures and helpers
call ``new_net`` on a folder of their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import bittensor as bt

from core.localchain import LocalSubnet
from devtools.localproc import make_wallet

OWN = object()  # as ``coldkey``: the wallet's own coldkey (its coldkeypub's address)


@dataclass
class Net:
    local: LocalSubnet  # the admin side: register, stake, hyperparameters, windows, failures
    wallets: Path  # the folder of the wallets (a neuron's --wallet-path)
    uids: dict[str, int] = field(default_factory=dict)  # each registered wallet's uid, by name

    def wallet(self, name: str) -> bt.Wallet:
        """A new wallet in the net's folder, not registered."""
        return make_wallet(self.wallets, name)

    def validator(self, name: str = "validator", *, stake: float, coldkey: object = "c",
                  endpoint: str | None = None) -> bt.Wallet:
        """A new wallet registered at block 0 (the next uid) with a validator permit and
        ``stake``; ``coldkey`` None: a placeholder of its hotkey's, ``OWN``: the wallet's own."""
        return self._register(name, coldkey, stake=stake, validator_permit=True,
                              endpoint=endpoint)

    def miner(self, name: str = "miner", *, coldkey: object = "c",
              endpoint: str | None = None) -> bt.Wallet:
        """A new wallet registered at block 0 (the next uid), no permit and no stake;
        ``endpoint``: served at registration (for a miner that is not started yet)."""
        return self._register(name, coldkey, endpoint=endpoint)

    def _register(self, name: str, coldkey: object, **kw) -> bt.Wallet:
        wallet = self.wallet(name)
        cold = wallet.coldkeypub.ss58_address if coldkey is OWN else coldkey
        assert cold is None or isinstance(cold, str), cold
        self.uids[name] = self.local.register(wallet.hotkey.ss58_address, cold, registered_at=0,
                                              **kw)
        return wallet


def new_net(folder: Path, wallets: str = "w", **create) -> Net:
    """A new local subnet in ``folder/"chain"`` (``create``: ``LocalSubnet.create``'s block_time,
    tempo, age_blocks and hyperparameters) with its wallets to be in ``folder/wallets``."""
    return Net(LocalSubnet.create(folder / "chain", **create), folder / wallets)
