"""One declaration per period (docs/protocol.md §2): the miner signs the declaration of a period
once, the first time a validator asks for it, and answers that same signed declaration to every
validator for the rest of the period, whatever its workers' health or its capacity file says
meanwhile (a change takes effect from the next period).

Two different declarations signed for one period are proof of an equivocation (``core.declaration``)
that zeroes the miner's period, so the latch must outlive the process: every declaration is
written to a small file in the miner's state folder, atomically (a temporary file, fsynced,
renamed over the old one, the folder fsynced), before it is answered. A restarted miner reads it
back and answers what it signed; it refuses to start on a file it cannot read, rather than risk
signing a second declaration for a period. Only the last ``KEEP`` periods are kept, and no period
older than them is signed again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from bittensor.sp_core import Keypair
from pydantic import ValidationError

from core.declaration import SignedDeclaration, sign
from core.errors import PeerFault
from core.miner.config import ConfigError

KEEP = 3  # periods remembered: validators ask for the current one or the next


class WrongPeriod(PeerFault):
    """A period this miner does not sign now: not the one it is in nor, in its last minute, the
    next (``core.miner.state``), or older than those the latch remembers."""


class DeclarationLatch:
    """The declarations ``keypair`` signed on ``netuid``, by period, kept in a file of their
    own in the miner's state ``folder``."""

    def __init__(self, keypair: Keypair, netuid: int, folder: Path):
        self.keypair, self.netuid = keypair, netuid
        self.path = folder.expanduser() / f"declarations-{netuid}-{keypair.ss58_address}.json"
        self.signed: dict[int, SignedDeclaration] = self._load()

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    def declare(self, period: int,
                capacities: Callable[[], Mapping[str, float]]) -> SignedDeclaration:
        """The declaration of ``period``: the one signed before, else ``capacities()`` signed
        now and recorded before it is returned. OSError when it cannot be recorded (nothing is
        answered then); WrongPeriod for a period older than the latch remembers."""
        if period in self.signed:
            return self.signed[period]
        if self.signed and period <= max(self.signed) - KEEP:
            raise WrongPeriod(f"period {period} is over")
        declaration = sign(self.keypair, self.netuid, period, capacities())
        newest = max([period, *self.signed])
        signed = {p: d for p, d in {**self.signed, period: declaration}.items()
                  if p > newest - KEEP}
        self._save(signed)
        self.signed = signed
        return declaration

    def _load(self) -> dict[int, SignedDeclaration]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot read the declarations this miner signed: "
                              f"{e.strerror}") from None
        try:
            return {d.period: d for d in map(SignedDeclaration.model_validate, json.loads(text))}
        except (ValueError, TypeError, ValidationError):
            raise ConfigError(f"{self.path}: not the declarations this miner signed; starting "
                              f"would risk signing a second declaration for a period (move the "
                              f"file away only once the periods in it are over)") from None

    def _save(self, signed: Mapping[int, SignedDeclaration]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps([d.model_dump() for _, d in sorted(signed.items())])
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
