"""A local subnet kept in a folder: ``subnet.json`` (neurons, stakes, endpoints) and
``weights.jsonl`` (every weight vector set, with its block and time).

Blocks advance with wall-clock time from the subnet's genesis, and each block's hash is derived
from the subnet's random seed, so every process that reads the folder agrees on the block, its
hash and the metagraph without a node. Weights go through bittensor's own clip and u16
normalisation, as on chain. Writes are atomic and serialised by a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

import bittensor as bt
from bittensor.intents.weights import clip_to_max_weight, normalize

from core.chain import ChainError, Metagraph, Neuron
from core.plan import openings, window_blocks

U16_MAX = 65535


class LocalChainError(ChainError):
    pass


class LocalChain:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._state_path = self.folder / "subnet.json"
        if not self._state_path.exists():
            raise LocalChainError(f"{self._state_path}: no local subnet here (create one first)")
        self.netuid = int(self._read()["netuid"])

    # -- creation and registration (what btcli does on a real chain) --

    @classmethod
    def create(cls, folder: str | Path, *, netuid: int = 19, block_time: float = 1.0,
               tempo: int = 10, max_weight_limit: float = 1.0, age_blocks: int = 0) -> LocalChain:
        """A new subnet; ``age_blocks`` back-dates its genesis, so neurons registered at block 0
        are that old."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "netuid": netuid,
            "genesis": time.time() - age_blocks * block_time,
            "seed": secrets.token_hex(16),
            "block_time": block_time,
            "tempo": tempo,
            "max_weight_limit": max_weight_limit,
            "neurons": [],
        }
        _atomic_write(folder / "subnet.json", state)
        return cls(folder)

    def register(self, hotkey: str, coldkey: str, *, stake: float = 0.0,
                 validator_permit: bool = False, registered_at: int | None = None,
                 endpoint: str | None = None) -> int:
        with self._locked() as state:
            for n in state["neurons"]:
                if n["hotkey"] == hotkey:
                    return n["uid"]
            uid = len(state["neurons"])
            state["neurons"].append({
                "uid": uid, "hotkey": hotkey, "coldkey": coldkey, "stake": float(stake),
                "validator_permit": bool(validator_permit), "endpoint": endpoint,
                "registered_at": self._block_of(state) if registered_at is None else registered_at,
            })
            return uid

    def reseed(self, seed: str) -> None:
        """Derive block hashes from ``seed`` from now on (``windows_seed`` picks one that puts
        audit windows where a demo or a test needs them; no one can do that on chain)."""
        with self._locked() as state:
            state["seed"] = seed

    def open_windows(self, period_blocks: int, periods: int, end_margin: int = 0) -> None:
        """Reseed so that each of the next ``periods`` periods from now (with a few to spare)
        has an audit window in its second half: after a validator that starts a period late
        (it starts one only with half of it left) and before the period's end. With
        ``end_margin``, every window in those periods also ends that many blocks before its
        period does: on one-minute periods a busy machine can take longer to finish a window's
        requests and exchange its reports than the tenth of a period a validator waits for the
        reports it lacks at the period's end (the search grows steeply with it: keep
        ``periods`` small)."""
        first = self._block_of(self._read()) // period_blocks
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
            hashes = [_hash(seed, b) for b in range(first, periods.stop * period_blocks)]
            _, opened = openings(first, hashes, period_blocks)
            late = strict and any(b % period_blocks >= offsets.stop for b in opened
                                  if b >= periods.start * period_blocks)
            if not late and all(any(b - p * period_blocks in offsets for b in opened)
                                for p in periods):
                return seed
        raise LocalChainError("no seed found for those windows")

    # -- the Chain interface --

    async def block(self) -> int:
        return self._block_of(self._read())

    async def block_hash(self, block: int) -> str:
        return _hash(self._read()["seed"], block)

    async def block_time(self) -> float:
        return float(self._read()["block_time"])

    async def tempo(self) -> int:
        return int(self._read()["tempo"])

    async def metagraph(self, block: int | None = None) -> Metagraph:
        """At ``block``: the neurons registered by then (the file keeps no history of stakes or
        endpoints, so those are today's)."""
        state = self._read()
        head = self._block_of(state)
        at = head if block is None else min(block, head)
        return Metagraph(
            block=at,
            neurons=tuple(Neuron(**n) for n in state["neurons"] if n["registered_at"] <= at),
        )

    async def set_weights(self, wallet: bt.Wallet, weights: dict[int, float]) -> None:
        hotkey = wallet.hotkey.ss58_address
        state = self._read()
        me = next((n for n in state["neurons"] if n["hotkey"] == hotkey), None)
        if me is None or not me["validator_permit"]:
            raise LocalChainError(f"{hotkey} is not a registered validator with a permit")
        uids = sorted(weights)
        floats = [float(weights[u]) for u in uids]
        limit = float(state["max_weight_limit"])
        if limit < 1.0:
            floats = clip_to_max_weight(floats, limit)
        out_uids, values = normalize(uids, floats)
        if not out_uids:
            raise LocalChainError("all weights are zero; nothing to set")
        record = {
            "block": self._block_of(state), "time": time.time(), "hotkey": hotkey,
            "uid": me["uid"], "weights": dict(zip(map(str, out_uids), values)),
        }
        # a line to a local file: the local subnet's chain, not worth a thread
        with open(self.folder / "weights.jsonl", "a") as f:  # noqa: ASYNC230
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    async def serve(self, wallet: bt.Wallet, host: str, port: int) -> None:
        hotkey = wallet.hotkey.ss58_address
        with self._locked() as state:
            for n in state["neurons"]:
                if n["hotkey"] == hotkey:
                    n["endpoint"] = f"http://{host}:{port}"
                    return
        raise LocalChainError(f"{hotkey} is not registered on the local subnet {self.folder}")

    async def close(self) -> None:
        return None

    # -- reading what was set --

    def weights_log(self) -> list[dict]:
        """Every weight vector set so far, oldest first (u16 values by uid)."""
        path = self.folder / "weights.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- internals --

    def _read(self) -> dict:
        return json.loads(self._state_path.read_text())

    @staticmethod
    def _block_of(state: dict) -> int:
        return int((time.time() - state["genesis"]) / state["block_time"])

    @contextmanager
    def _locked(self):
        with open(self.folder / "subnet.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            yield state
            _atomic_write(self._state_path, state)


def _hash(seed: str, block: int) -> str:
    return "0x" + hashlib.sha256(f"{seed}:{block}".encode()).hexdigest()


def _atomic_write(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)
