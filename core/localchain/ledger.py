"""A local subnet's state, kept in a folder that every process on the machine shares: the
subnet's settings (``subnet.json``) and an append-only log of what happened and at which block
(``events.jsonl``). The state at block b is the log folded up to b, so a read at b sees the
subnet as it was at b, as an archive node would answer.

Blocks advance with wall-clock time from the subnet's genesis; each block's hash is derived from
the subnet's seed, so every process agrees on the block, its hash and the state without a node.
Writes append a line under a file lock; reads take no lock (a line is appended whole).

This is the local chain's model and its admin side (what btcli and the subnet owner do on a real
chain: create, register, stake, set hyperparameters). Neurons never use it directly: they read
and write through bittensor's ``Client`` over ``core.localchain.substrate.FolderSubstrate``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bittensor.settings import U16_MAX

from core import yuma
from core.errors import SetupError

# What a new local subnet's chain enforces (subtensor's names, this project's localnet values):
# rate limits in blocks, the weight limit in u16, the cutoff in blocks.
DEFAULT_HYPERPARAMETERS = {
    "tempo": 10,
    "weights_rate_limit": 0,
    "min_allowed_weights": 0,
    "max_weights_limit": U16_MAX,
    "weights_version_key": 0,
    "commit_reveal": False,
    "reveal_period_epochs": 1,
    "activity_cutoff": 5000,
    "serving_rate_limit": 0,
}


class LedgerError(SetupError):
    """The local subnet's folder cannot be used as asked."""


@dataclass
class Axon:
    ip: int
    port: int
    ip_type: int
    block: int  # when it was served: the serving rate limit counts from it


@dataclass
class LocalNeuron:
    uid: int
    hotkey: str
    coldkey: str
    stake: float  # alpha, in whole units
    validator_permit: bool
    registered_at: int
    last_update: int
    axon: Axon | None = None
    # the weights this neuron set last, applied at ``weights_block``: {uid: u16}
    weights: dict[int, int] = field(default_factory=dict)
    weights_block: int = 0


@dataclass
class Commit:
    """Weights committed under commit-reveal: hidden until ``reveal_block``."""
    uid: int
    block: int
    reveal_round: int
    reveal_block: int
    weights: dict[int, int]
    version_key: int


@dataclass
class State:
    block: int
    neurons: list[LocalNeuron]
    commits: list[Commit]

    def by_hotkey(self, hotkey: str) -> LocalNeuron | None:
        return next((n for n in self.neurons if n.hotkey == hotkey), None)


@dataclass(frozen=True)
class EpochResult:
    """Yuma's outcome at an epoch block, per uid (core/yuma.py, as subtensor's run_epoch)."""
    block: int
    incentive: list[float]
    consensus: list[float]
    trust: list[float]  # validator trust (0 for uids that do not validate)
    dividends: list[float]  # without bonds: each active validator's stake x trust, normalised


class Ledger:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._config_path = self.folder / "subnet.json"
        self._events_path = self.folder / "events.jsonl"
        if not self._config_path.exists():
            raise LedgerError(f"{self._config_path}: no local subnet here (create one first)")
        self._config = json.loads(self._config_path.read_text())
        self._config_mtime = self._config_path.stat().st_mtime_ns
        self.netuid = int(self._config["netuid"])
        self._events: list[dict] = []
        self._events_size = 0

    # -- creation (what the subnet owner does) --

    @classmethod
    def create(cls, folder: str | Path, *, netuid: int = 19, block_time: float = 1.0,
               age_blocks: int = 0, **hyperparameters) -> Ledger:
        """A new subnet; ``age_blocks`` back-dates its genesis, so neurons registered at block
        0 are that old. ``hyperparameters``: any of ``DEFAULT_HYPERPARAMETERS``."""
        unknown = set(hyperparameters) - set(DEFAULT_HYPERPARAMETERS)
        if unknown:
            raise LedgerError(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "netuid": netuid,
            "genesis": time.time() - age_blocks * block_time,
            "seed": secrets.token_hex(16),
            "block_time": block_time,
            "hyperparameters": {**DEFAULT_HYPERPARAMETERS, **hyperparameters},
        }
        _atomic_write(folder / "subnet.json", config)
        (folder / "events.jsonl").touch()
        return cls(folder)

    # -- time and hashes --

    @property
    def block_time(self) -> float:
        return float(self._config["block_time"])

    @property
    def genesis(self) -> float:
        return float(self._config["genesis"])

    def head(self) -> int:
        return int((time.time() - self.genesis) / self.block_time)

    def block_at(self, unix: float) -> int:
        return int((unix - self.genesis) / self.block_time)

    def timestamp(self, block: int) -> float:
        return self.genesis + block * self.block_time

    def block_hash(self, block: int) -> str:
        return block_hash(self.config()["seed"], block)

    def hyper(self, name: str):
        return self.config()["hyperparameters"][name]

    def config(self) -> dict:
        """The settings, re-read when another process changed them."""
        mtime = self._config_path.stat().st_mtime_ns
        if mtime != self._config_mtime:
            self._config = json.loads(self._config_path.read_text())
            self._config_mtime = mtime
        return self._config

    def update_config(self, **changes) -> None:
        with self.locked():
            config = json.loads(self._config_path.read_text())
            hyper = changes.pop("hyperparameters", {})
            unknown = set(hyper) - set(DEFAULT_HYPERPARAMETERS)
            if unknown:
                raise LedgerError(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
            config.update(changes)
            config["hyperparameters"].update(hyper)
            _atomic_write(self._config_path, config)

    # -- epochs (subtensor: an epoch runs where (block + netuid + 1) % (tempo + 1) == 0) --

    def last_epoch(self, block: int) -> int:
        tempo = int(self.hyper("tempo"))
        return block - (block + self.netuid + 1) % (tempo + 1)

    # -- the log --

    def append(self, event: dict) -> None:
        """Append one event (holding the lock: callers check a rule and write in one go)."""
        line = json.dumps(event) + "\n"
        with open(self._events_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.folder / "subnet.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def events(self) -> list[dict]:
        """Every event so far, oldest first (read incrementally: the log only grows)."""
        size = self._events_path.stat().st_size
        if size != self._events_size:
            with open(self._events_path) as f:
                f.seek(self._events_size)
                chunk = f.read(size - self._events_size)
            complete = chunk[:chunk.rfind("\n") + 1]  # a line still being written waits
            self._events.extend(json.loads(line) for line in complete.splitlines() if line)
            self._events_size += len(complete.encode())
        return self._events

    # -- the state at a block --

    def state(self, block: int | None = None) -> State:
        at = self.head() if block is None else block
        neurons: dict[int, LocalNeuron] = {}
        commits: list[Commit] = []
        events = [e for e in self.events() if e["block"] <= at]
        # a commit reveals itself at its block: fold it in there, in block order
        for e in events:
            if e["op"] == "commit" and e["reveal_block"] <= at:
                events.append({**e, "op": "reveal", "block": e["reveal_block"]})
        events.sort(key=lambda e: e["block"])  # stable: same-block events keep their order
        for e in events:
            op = e["op"]
            if op == "register":
                neurons[e["uid"]] = LocalNeuron(
                    uid=e["uid"], hotkey=e["hotkey"], coldkey=e["coldkey"], stake=e["stake"],
                    validator_permit=e["permit"], registered_at=e["block"],
                    last_update=e["block"])  # a re-registered uid starts afresh
            elif op == "stake":
                n = neurons[e["uid"]]
                n.stake, n.validator_permit = e["stake"], e["permit"]
            elif op == "serve":
                neurons[e["uid"]].axon = Axon(e["ip"], e["port"], e["ip_type"], e["block"])
            elif op in ("weights", "reveal"):
                n = neurons[e["uid"]]
                if n.hotkey != e["hotkey"]:
                    continue  # its uid was re-registered before the reveal
                n.weights = {int(k): v for k, v in e["weights"].items()}
                n.weights_block = e["block"]
                n.last_update = e["block"]
            elif op == "commit":
                if neurons[e["uid"]].hotkey == e["hotkey"]:
                    neurons[e["uid"]].last_update = e["block"]
                if e["reveal_block"] > at:
                    commits.append(Commit(e["uid"], e["block"], e["reveal_round"],
                                          e["reveal_block"],
                                          {int(k): v for k, v in e["weights"].items()},
                                          e["version_key"]))
        return State(at, [neurons[u] for u in sorted(neurons)], commits)

    def epoch(self, block: int) -> EpochResult:
        """Yuma at the last epoch at or before ``block``, on the weights then in effect."""
        at = self.last_epoch(block)
        state = self.state(at)
        n = len(state.neurons)
        cutoff = int(self.hyper("activity_cutoff"))
        validators = [v for v in state.neurons if v.validator_permit and v.stake > 0
                      and v.last_update + cutoff >= at]
        w = np.zeros((len(validators), n))
        for i, v in enumerate(validators):
            for uid, value in v.weights.items():
                # subtensor masks self-weights, and a weight set at or before its target's
                # registration
                if uid < n and uid != v.uid and v.weights_block > state.neurons[uid].registered_at:
                    w[i, uid] = value
        zero = [0.0] * n
        if not validators or w.sum() == 0:
            return EpochResult(at, zero, zero, zero, zero)
        stake = np.array([v.stake for v in validators])
        result = yuma.epoch(w, stake)
        trust, dividends = list(zero), list(zero)
        share = stake * result.vtrust
        for i, v in enumerate(validators):
            trust[v.uid] = float(result.vtrust[i])
            dividends[v.uid] = float(share[i] / share.sum()) if share.sum() > 0 else 0.0
        return EpochResult(at, [float(x) for x in result.incentive],
                           [float(x) for x in result.consensus], trust, dividends)


def block_hash(seed: str, block: int) -> str:
    """A block's hash on a local subnet: unpredictable without its seed, the same everywhere."""
    return "0x" + hashlib.sha256(f"{seed}:{block}".encode()).hexdigest()


def _atomic_write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
