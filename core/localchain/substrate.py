"""bittensor's ``Substrate`` protocol over a local subnet's folder (``ledger.Ledger``): what
``bt.Client(network, substrate=FolderSubstrate(folder))`` reads and writes instead of a node.

It answers the reads the SDK makes for the neurons (blocks and hashes, the subnet's metagraph
from ``SubnetInfoRuntimeApi.get_metagraph``, the ``SubtensorModule`` storage the weight and
serving intents read) in the value shapes bittensor 11.3 decodes, and applies the extrinsics the
neurons submit (``serve_axon``, ``set_mechanism_weights``, ``commit_timelocked_mechanism_weights``)
with the chain's rules that matter to them: registration, the serving and weights rate limits,
``MinAllowedWeights``, ``MaxWeightsLimit``, ``WeightsVersionKey``, commit-reveal with the reveal
applied at its round, and a permit to set weights. A refused extrinsic is a failed
``ExtrinsicResult`` carrying a ``bt.ChainError`` named as subtensor names it.

Timelocked commits: drand's signature for a future round cannot be had offline, so the chain
cannot decrypt a commit here. This module stands in for drand: ``learn_commits`` wraps the SDK's
encryption in the process that commits, and the plaintext it saw is stored beside the ciphertext,
to be applied at the block the reveal round is reached. The commit itself (its ciphertext, its
round) is the SDK's, unchanged.

Faults: a ``faults.json`` in the folder (``LocalSubnet.fail``) makes the named method raise what
the RPC backend raises (a dropped connection, a timeout, pruned state) for its next N calls, in
every process that uses the folder.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import bittensor as bt
import bittensor_core
from bittensor.settings import U16_MAX
from bittensor.timelock import reveal_time

from core.localchain.ledger import Ledger, State

FAULTS = {
    "connection": lambda method: bt.RpcConnectionError(
        f"could not connect to any endpoint ({method})"),
    "timeout": lambda method: bt.RpcConnectionError(
        f"the connection timed out without a response ({method})"),
    "pruned": lambda method: bt.ChainError(
        f"State already discarded for this block ({method})", name="StateDiscarded"),
}

_plaintexts: dict[bytes, tuple[list[int], list[int], int]] = {}  # commit -> uids, values, key


def learn_commits() -> None:
    """Remember the plaintext of every timelocked commit this process encrypts (see the module's
    docstring): the local chain's stand-in for drand's reveal."""
    real = bittensor_core.get_encrypted_commit_v2
    if getattr(real, "_local_chain", False):
        return

    def encrypt(**kwargs):
        commit, reveal_round = real(**kwargs)
        _plaintexts[bytes(commit)] = (list(kwargs["uids"]), list(kwargs["weights"]),
                                      int(kwargs["version_key"]))
        return commit, reveal_round

    encrypt._local_chain = True  # type: ignore[attr-defined]
    bittensor_core.get_encrypted_commit_v2 = encrypt


class FolderSubstrate:
    """One process's connection to the local subnet in ``folder``."""

    def __init__(self, folder):
        self.ledger = Ledger(folder)
        self.token_symbols: dict[int, str] = {}
        self._blocks: dict[str, int] = {}  # hashes handed out -> their blocks
        self.calls: dict[str, int] = {}  # method -> times called (tests count reads)
        learn_commits()

    def balance(self, rao: int, netuid: int = 0) -> bt.Balance:
        return bt.Balance.from_rao(rao, netuid)

    async def connect(self) -> None:
        self._enter("connect")

    async def close(self) -> None:
        return None

    # -- reads --

    async def block_number(self) -> int:
        self._enter("block_number")
        return self.ledger.head()

    async def finalized_block_number(self) -> int:
        self._enter("finalized_block_number")
        return self.ledger.head()

    async def block_hash(self, block: int | None = None) -> str:
        self._enter("block_hash")
        return self._hash(self.ledger.head() if block is None else block)

    async def block_time(self) -> float:
        return self.ledger.block_time

    async def spec_version(self) -> int:
        return 1

    async def get_block(self, block_number: int | None = None,
                        block_hash: str | None = None) -> dict | None:
        self._enter("get_block")
        block = self._block(block_hash) if block_number is None else block_number
        if block > self.ledger.head():
            return None
        now_ms = int(self.ledger.timestamp(block) * 1000)
        return {
            "header": {"number": block, "hash": self._hash(block),
                       "parentHash": self._hash(block - 1)},
            "extrinsics": [{"call": {"call_module": "Timestamp", "call_function": "set",
                                     "call_args": [{"name": "now", "value": now_ms}]}}],
        }

    async def query(self, module: str, storage_function: str, params: list | None = None,
                    block_hash: str | None = None) -> Any:
        self._enter("query")
        params = params or []
        block = self._block(block_hash)
        if (module, storage_function) == ("Timestamp", "Now"):
            return int(self.ledger.timestamp(block) * 1000)
        if (module, storage_function) == ("System", "BlockHash"):
            return self._hash(int(params[0])) if int(params[0]) <= block else "0x" + "00" * 32
        if module != "SubtensorModule":
            raise bt.ChainError(f"the local chain has no storage {module}.{storage_function}")
        if params and params[0] != self.ledger.netuid and storage_function != "LastUpdate":
            return None
        hyper = {
            "Tempo": "tempo", "WeightsSetRateLimit": "weights_rate_limit",
            "MinAllowedWeights": "min_allowed_weights", "MaxWeightsLimit": "max_weights_limit",
            "WeightsVersionKey": "weights_version_key",
            "CommitRevealWeightsEnabled": "commit_reveal",
            "RevealPeriodEpochs": "reveal_period_epochs", "ActivityCutoff": "activity_cutoff",
            "ServingRateLimit": "serving_rate_limit",
        }
        if storage_function in hyper:
            return self.ledger.hyper(hyper[storage_function])
        state = self.ledger.state(block)
        if storage_function == "Uids":
            n = state.by_hotkey(params[1])
            return None if n is None else n.uid
        if storage_function == "LastUpdate":
            return [n.last_update for n in state.neurons]
        if storage_function == "Weights":
            uid = int(params[1])
            if uid >= len(state.neurons):
                return []
            return sorted(state.neurons[uid].weights.items())
        if storage_function == "SubnetEpochConsensus":
            return "Yuma"
        if storage_function == "LastEpochBlock":
            return self.ledger.last_epoch(block)
        if storage_function == "BlocksSinceLastStep":
            return block - self.ledger.last_epoch(block)
        if storage_function in ("PendingEpochAt", "SubnetEpochIndex"):
            return 0
        raise bt.ChainError(f"the local chain has no storage {module}.{storage_function}")

    async def query_map(self, module: str, storage_function: str, params: list | None = None,
                        block_hash: str | None = None) -> list[tuple[Any, Any]]:
        self._enter("query_map")
        if (module, storage_function) == ("SubtensorModule", "TokenSymbol"):
            return []
        raise bt.ChainError(f"the local chain has no storage map {module}.{storage_function}")

    async def runtime_call(self, api: str, method: str, params: list,
                           block_hash: str | None = None) -> Any:
        self._enter("runtime_call")
        if (api, method) != ("SubnetInfoRuntimeApi", "get_metagraph"):
            raise bt.ChainError(f"the local chain has no runtime call {api}.{method}")
        if int(params[0]) != self.ledger.netuid:
            return None
        return self._metagraph(self._block(block_hash))

    # -- writes --

    async def compose(self, call):
        return call

    async def estimate_fee(self, call, keypair) -> bt.Balance:
        return bt.Balance.from_rao(0)

    async def submit(self, call, keypair, *, nonce: int | None = None, period: int | None = None,
                     wait_for_inclusion: bool = True,
                     wait_for_finalization: bool = True) -> bt.ExtrinsicResult:
        self._enter("submit")
        apply = {
            "serve_axon": self._serve,
            "set_mechanism_weights": self._set_weights,
            "commit_timelocked_mechanism_weights": self._commit,
        }.get(call.function)
        if call.module != "SubtensorModule" or apply is None:
            return _refused(f"the local chain does not apply {call.module}.{call.function}",
                            "CallUnavailable")
        with self.ledger.locked():
            block = self.ledger.head() + 1  # included in the next block
            state = self.ledger.state(block - 1)
            me = state.by_hotkey(keypair.ss58_address)
            if me is None:
                return _refused(f"hotkey {keypair.ss58_address} is not registered on netuid "
                                f"{self.ledger.netuid}", "HotKeyNotRegisteredInSubNet")
            if call.params.get("netuid") != self.ledger.netuid:
                return _refused(f"no subnet {call.params.get('netuid')} here", "SubnetNotExists")
            refusal = apply(call.params, me.uid, keypair.ss58_address, state, block)
            if refusal is not None:
                return refusal
        if wait_for_inclusion or wait_for_finalization:  # until its block exists
            await asyncio.sleep(max(self.ledger.timestamp(block) - time.time(), 0))
        return bt.ExtrinsicResult(success=True, message="included", block_hash=self._hash(block),
                                  extrinsic_id=f"{block}-1")

    def _serve(self, p: dict, uid: int, hotkey: str, state: State, block: int):
        me = state.neurons[uid]
        limit = int(self.ledger.hyper("serving_rate_limit"))
        if me.axon is not None and limit and block - me.axon.block < limit:
            return _refused(f"serving rate limit exceeded: served at block {me.axon.block}, "
                            f"again allowed from block {me.axon.block + limit}",
                            "ServingRateLimitExceeded")
        if not p["ip"] or not 0 < p["port"] < 65536:
            return _refused("invalid IP address or port", "InvalidIpAddress")
        self.ledger.append({"block": block, "op": "serve", "uid": uid, "hotkey": hotkey,
                            "ip": int(p["ip"]), "port": int(p["port"]),
                            "ip_type": int(p["ip_type"])})
        return None

    def _weight_rules(self, uid: int, state: State, block: int, dests: list[int],
                      values: list[int], version_key: int):
        """subtensor's checks of a weight vector (set_weights.rs, in its order)."""
        me = state.neurons[uid]
        h = self.ledger.config()["hyperparameters"]
        if not me.validator_permit and dests != [uid]:
            return _refused(f"uid {uid} has no validator permit", "NeuronNoValidatorPermit")
        if version_key < int(h["weights_version_key"]):
            return _refused(f"version key {version_key} is older than the subnet's "
                            f"{h['weights_version_key']}", "IncorrectWeightVersionKey")
        limit = int(h["weights_rate_limit"])
        if limit and me.last_update and block - me.last_update < limit:  # as subtensor: from
            # the last weights, or the registration (LastUpdate is set then)
            return _refused(f"weights set at block {me.last_update}; the rate limit is {limit} "
                            f"blocks", "SettingWeightsTooFast")
        if len(set(dests)) != len(dests) or any(d >= len(state.neurons) for d in dests):
            return _refused("a uid is repeated or not on the subnet", "UidVecContainInvalidOne")
        if dests != [uid] and len(dests) < int(h["min_allowed_weights"]):
            return _refused(f"{len(dests)} weights, under the subnet's minimum "
                            f"{h['min_allowed_weights']}", "WeightVecLengthIsLow")
        total = sum(values)
        if dests != [uid] and total and max(values) * U16_MAX > int(h["max_weights_limit"]) * \
                total + U16_MAX:  # the chain's check on the normalised vector, to a rounding
            return _refused("a weight is over the subnet's max weight limit", "MaxWeightExceeded")
        return None

    def _set_weights(self, p: dict, uid: int, hotkey: str, state: State, block: int):
        if self.ledger.hyper("commit_reveal"):
            return _refused("commit-reveal is on: weights are committed, not set",
                            "CommitRevealEnabled")
        dests, values = list(p["dests"]), list(p["weights"])
        refusal = self._weight_rules(uid, state, block, dests, values, int(p["version_key"]))
        if refusal is not None:
            return refusal
        self.ledger.append({"block": block, "op": "weights", "uid": uid, "hotkey": hotkey,
                            "weights": dict(zip(map(str, dests), values)),
                            "version_key": int(p["version_key"])})
        return None

    def _commit(self, p: dict, uid: int, hotkey: str, state: State, block: int):
        if not self.ledger.hyper("commit_reveal"):
            return _refused("commit-reveal is off on this subnet", "CommitRevealDisabled")
        plain = _plaintexts.get(bytes(p["commit"]))
        if plain is None:
            return _refused("a commit this local chain cannot reveal (encrypted in another "
                            "process)", "InvalidRevealCommitHashNotMatch")
        dests, values, version_key = plain
        refusal = self._weight_rules(uid, state, block, dests, values, version_key)
        if refusal is not None:
            return refusal
        reveal_round = int(p["reveal_round"])
        # subtensor reveals a commit at the epoch reveal_period_epochs after its own, once
        # drand's pulse for its round is there
        epochs = int(self.ledger.hyper("reveal_period_epochs"))
        due = self.ledger.last_epoch(block) + epochs * (int(self.ledger.hyper("tempo")) + 1)
        reveal_block = max(self.ledger.block_at(reveal_time(reveal_round).timestamp()), due)
        self.ledger.append({"block": block, "op": "commit", "uid": uid, "hotkey": hotkey,
                            "reveal_round": reveal_round, "reveal_block": reveal_block,
                            "weights": dict(zip(map(str, dests), values)),
                            "version_key": version_key})
        return None

    # -- internals --

    def _metagraph(self, block: int) -> dict:
        """``get_metagraph``'s answer as bittensor decodes it (``bittensor.metagraph._build``):
        stakes in rao, scores as u16 fractions, axons as integers."""
        state = self.ledger.state(block)
        epoch = self.ledger.epoch(block)
        cutoff = int(self.ledger.hyper("activity_cutoff"))
        n = len(state.neurons)

        def u16(values: list[float]) -> list[int]:
            return [round(min(max(v, 0.0), 1.0) * U16_MAX) for v in (values + [0.0] * n)[:n]]

        def axon(a) -> dict:
            if a is None:
                return {"ip": 0, "port": 0, "ip_type": 4}
            return {"ip": a.ip, "port": a.port, "ip_type": a.ip_type}

        stakes = [int(round(x.stake * 1e9)) for x in state.neurons]
        return {
            "netuid": self.ledger.netuid, "block": block, "tempo": self.ledger.hyper("tempo"),
            "last_step": epoch.block, "blocks_since_last_step": block - epoch.block,
            "owner_hotkey": "", "owner_coldkey": "", "network_registered_at": 0,
            "num_uids": n, "max_uids": 256,
            "hotkeys": [x.hotkey for x in state.neurons],
            "coldkeys": [x.coldkey for x in state.neurons],
            "axons": [axon(x.axon) for x in state.neurons],
            "validator_permit": [x.validator_permit for x in state.neurons],
            "block_at_registration": [x.registered_at for x in state.neurons],
            "last_update": [x.last_update for x in state.neurons],
            "active": [x.last_update + cutoff >= block for x in state.neurons],
            "total_stake": stakes, "alpha_stake": stakes, "tao_stake": [0] * n,
            "emission": [0] * n,
            "rank": u16(epoch.incentive), "incentives": u16(epoch.incentive),
            "consensus": u16(epoch.consensus), "trust": u16(epoch.consensus),
            "validator_trust": u16(epoch.trust), "dividends": u16(epoch.dividends),
            "pruning_score": [0] * n,
        }

    def _hash(self, block: int) -> str:
        h = self.ledger.block_hash(block)
        self._blocks[h] = block
        if len(self._blocks) > 100_000:
            self._blocks.clear()
            self._blocks[h] = block
        return h

    def _block(self, block_hash: str | None) -> int:
        if block_hash is None:
            return self.ledger.head()
        if block_hash not in self._blocks:
            raise bt.ChainError(f"unknown block hash {block_hash}", name="UnknownBlock")
        return self._blocks[block_hash]

    def _enter(self, method: str) -> None:
        """Count the call; raise the fault ``faults.json`` asks of it, if any."""
        self.calls[method] = self.calls.get(method, 0) + 1
        path = self.ledger.folder / "faults.json"
        if not path.exists():
            return
        with self.ledger.locked():
            faults = json.loads(path.read_text())
            fault = faults.get(method) or faults.get("*")
            if not fault or fault["count"] <= 0:
                return
            fault["count"] -= 1
            path.write_text(json.dumps(faults))
        raise FAULTS[fault["error"]](method)


def _refused(message: str, name: str) -> bt.ExtrinsicResult:
    error = bt.ChainError(message, name=name)
    return bt.ExtrinsicResult(success=False, message=message, error=error)
