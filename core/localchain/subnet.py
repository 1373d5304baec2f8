"""The local subnet's admin side: what btcli, the subnet owner and a test do to a chain (create
it, register and stake neurons, set hyperparameters, choose block hashes, inject faults), and
what they read back (the weights as the chain recorded them, Yuma's outcome). Neurons never use
this: they run ``core.chain.connect("local:FOLDER")``, bittensor's ``Client`` over
``FolderSubstrate``."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from urllib.parse import urlsplit

from bittensor.sp_core import Keypair

from core.localchain.ledger import EpochResult, Ledger, LedgerError, block_hash
from core.plan import openings, window_blocks


class LocalSubnet:
    def __init__(self, folder: str | Path):
        self.ledger = Ledger(folder)
        self.folder = self.ledger.folder
        self.netuid = self.ledger.netuid

    @classmethod
    def create(cls, folder: str | Path, *, netuid: int = 19, block_time: float = 1.0,
               tempo: int = 10, age_blocks: int = 0, **hyperparameters) -> LocalSubnet:
        """A new subnet in ``folder`` (see ``Ledger.create``); ``hyperparameters`` by their
        names in ``ledger.DEFAULT_HYPERPARAMETERS``."""
        Ledger.create(folder, netuid=netuid, block_time=block_time, age_blocks=age_blocks,
                      tempo=tempo, **hyperparameters)
        return cls(folder)

    def chain(self):
        """A chain client on this subnet, as a neuron has one (``core.chain.connect``)."""
        from core.chain import connect

        return connect(f"local:{self.folder}", self.netuid)

    # -- registration and stake --

    def register(self, hotkey: str, coldkey: str | None = None, *, stake: float = 0.0,
                 validator_permit: bool = False, registered_at: int | None = None,
                 uid: int | None = None, endpoint: str | None = None) -> int:
        """Register ``hotkey`` (the next free uid, or ``uid``: that neuron is deregistered and
        replaced, as the chain prunes one); its uid. Registering a hotkey again is a no-op.
        ``endpoint`` ("http://ip:port"): served at registration, for neurons that never serve
        themselves (a benchmark's simulated miners)."""
        coldkey = coldkey or _placeholder_coldkey(hotkey)
        with self.ledger.locked():
            block = self.ledger.head() if registered_at is None else registered_at
            state = self.ledger.state(max(block, self.ledger.head()))
            known = state.by_hotkey(hotkey)
            if known is not None:
                return known.uid
            if uid is None:
                uid = len(state.neurons)
            elif uid >= len(state.neurons):
                raise LedgerError(f"no uid {uid} to replace")
            self.ledger.append({"block": block, "op": "register", "uid": uid, "hotkey": hotkey,
                                "coldkey": coldkey, "stake": float(stake),
                                "permit": bool(validator_permit)})
            if endpoint is not None:
                address = urlsplit(endpoint)
                ip = ipaddress.ip_address(address.hostname or "")
                self.ledger.append({"block": block, "op": "serve", "uid": uid, "hotkey": hotkey,
                                    "ip": int(ip), "port": address.port, "ip_type": ip.version})
            return uid

    def stake(self, hotkey: str, stake: float, validator_permit: bool | None = None) -> None:
        """Set a neuron's stake (and permit) from the next block."""
        with self.ledger.locked():
            n = self.ledger.state().by_hotkey(hotkey)
            if n is None:
                raise LedgerError(f"{hotkey} is not registered")
            permit = n.validator_permit if validator_permit is None else validator_permit
            self.ledger.append({"block": self.ledger.head() + 1, "op": "stake", "uid": n.uid,
                                "stake": float(stake), "permit": bool(permit)})

    def set_hyperparameters(self, **values) -> None:
        """The subnet owner's hyperparameters, from now on (``ledger.DEFAULT_HYPERPARAMETERS``)."""
        self.ledger.update_config(hyperparameters=values)

    # -- block hashes (only a local subnet can choose them) --

    def reseed(self, seed: str) -> None:
        """Derive block hashes from ``seed`` from now on."""
        self.ledger.update_config(seed=seed)

    def open_windows(self, period_blocks: int, periods: int, end_margin: int = 0) -> None:
        """Reseed so that each of the next ``periods`` periods from now (with a few to spare)
        has an audit window in its second half: after a validator that starts a period late
        (it starts one only with half of it left) and before the period's end. With
        ``end_margin``, every window in those periods also ends that many blocks before its
        period does: on one-minute periods a busy machine can take longer to finish a window's
        requests and exchange its reports than the tenth of a period a validator waits for the
        reports it lacks at the period's end (the search grows steeply with it: keep
        ``periods`` small)."""
        first = self.ledger.head() // period_blocks
        last = period_blocks - window_blocks(period_blocks) - end_margin
        self.reseed(self.windows_seed(period_blocks, range(first, first + periods + 3),
                                      range(period_blocks // 2, max(last, period_blocks // 2 + 1)),
                                      strict=end_margin > 0))

    def windows_seed(self, period_blocks: int, periods: range, offsets: range,
                     strict: bool = False) -> str:
        """A seed under which each period in ``periods`` has an audit window opening at an
        offset (blocks into the period) in ``offsets`` (``strict``: and none opening later). A
        local subnet's convenience: a short run then always shows windows; the draws
        themselves are the protocol's."""
        for attempt in range(1_000_000):
            seed = f"windows-{attempt}"
            first = periods.start * period_blocks - 4 * window_blocks(period_blocks)
            hashes = [block_hash(seed, b) for b in range(first, periods.stop * period_blocks)]
            _, opened = openings(first, hashes, period_blocks)
            late = strict and any(b % period_blocks >= offsets.stop for b in opened
                                  if b >= periods.start * period_blocks)
            if not late and all(any(b - p * period_blocks in offsets for b in opened)
                                for p in periods):
                return seed
        raise LedgerError("no seed found for those windows")

    # -- faults, in every process that uses the folder --

    def fail(self, method: str, error: str, count: int = 1) -> None:
        """The next ``count`` calls of the Substrate ``method`` ("*": any) raise ``error``
        ("connection", "timeout" or "pruned"), whichever process makes them."""
        path = self.folder / "faults.json"
        with self.ledger.locked():
            faults = json.loads(path.read_text()) if path.exists() else {}
            faults[method] = {"error": error, "count": count}
            path.write_text(json.dumps(faults))

    # -- what the chain recorded --

    def weights_log(self) -> list[dict]:
        """Every weight vector applied so far, oldest first, as the chain recorded it (after
        clipping and quantising): plain sets at their block, commits at their reveal."""
        out = []
        for e in self.ledger.events():
            if e["op"] in ("weights", "commit"):
                block = e["block"] if e["op"] == "weights" else e["reveal_block"]
                out.append({"block": block, "hotkey": e["hotkey"], "uid": e["uid"],
                            "weights": e["weights"], "committed_at": e["block"]
                            if e["op"] == "commit" else None, "version_key": e["version_key"]})
        head = self.ledger.head()
        return sorted((e for e in out if e["block"] <= head), key=lambda e: e["block"])

    def commits(self) -> list[dict]:
        """Commits not yet revealed."""
        return [{"uid": c.uid, "block": c.block, "reveal_block": c.reveal_block}
                for c in self.ledger.state().commits]

    def epoch(self, block: int | None = None) -> EpochResult:
        """Yuma at the last epoch at or before ``block`` (the head)."""
        return self.ledger.epoch(self.ledger.head() if block is None else block)


def _placeholder_coldkey(hotkey: str) -> str:
    """A valid ss58 coldkey for a neuron whose coldkey does not matter here."""
    return Keypair.create_from_uri(f"//cold/{hotkey}").ss58_address
