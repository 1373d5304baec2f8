"""The chain, through bittensor's own ``Client``: finney, test, a ws(s):// endpoint, or a local
subnet folder (``local:PATH``: the same client over ``core.localchain.FolderSubstrate``, so
every local run and test drives this code).

Everything the SDK raises (its ``ChainError`` and ``RpcConnectionError``, a ``TypeError`` from
a value it cannot decode, a timeout) leaves here as the project's one ``ChainError``, naming the
call that failed; callers retry those with backoff. Weights go through ``bittensor.SetWeights``,
which clips to the subnet's max-weight limit, quantises to u16 and commits (timelocked) when the
subnet runs commit-reveal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import bittensor as bt
from bittensor._generated.storage import SubtensorModule as st
from bittensor.result import ErrorCode
from bittensor.settings import U16_MAX

from core.chain.errors import ChainError, RateLimited
from core.metagraph import Metagraph, Neuron

T = TypeVar("T")

# one read or one submission, bounded: a node that stops answering is a chain error, not a hang
READ_TIMEOUT_S = 60.0
SUBMIT_TIMEOUT_S = 120.0  # inclusion and finality of one extrinsic (finney: ~12 s a block)


@dataclass(frozen=True)
class WeightRules:
    """The subnet's settings a validator's weights must meet, read at the head."""
    version_key: int  # the oldest version key the chain accepts
    min_allowed_weights: int
    max_weight: float  # the largest share of a vector one uid may hold (MaxWeightsLimit / 65535)
    rate_limit: int  # blocks between two weight sets of one hotkey
    activity_cutoff: int  # blocks: a validator whose weights are older earns no dividends


@dataclass(frozen=True)
class WeightsSent:
    block: int  # the block that included it (the head when sent, if the chain did not say)
    reveal_round: int | None  # committed under commit-reveal: revealed at this drand round


class SubtensorChain:
    def __init__(self, network: str, netuid: int, *, substrate=None,
                 fallback_endpoints: list[str] | None = None,
                 archive_endpoints: list[str] | None = None):
        self.network = network
        self.netuid = netuid
        try:
            self._client = bt.Client(network, substrate=substrate,
                                     fallback_endpoints=fallback_endpoints,
                                     archive_endpoints=archive_endpoints)
        except (bt.BittensorError, ValueError) as e:
            raise ChainError(f"{network}: {e}") from None
        self._connected = False
        self._connecting = asyncio.Lock()  # one connection, however many calls come first

    # -- reads --

    async def block(self) -> int:
        return await self._call("the head block", lambda c: c.block())

    async def block_hash(self, block: int) -> str:
        """From ``System.BlockHash`` (one storage read; the node keeps recent blocks' hashes),
        else from the block itself."""
        value = await self._call(f"the hash of block {block}",
                                 lambda c: c.query(("System", "BlockHash"), [block]))
        if isinstance(value, str) and value.strip("0x"):
            return value
        info = await self._call(f"block {block}", lambda c: c.block_info(block))
        if info is None or not info.hash:
            raise ChainError(f"block {block} not found on {self.network}")
        return info.hash

    async def block_time(self) -> float:
        return await self._call("the block time", lambda c: c.block_time())

    async def metagraph(self, block: int | None = None) -> Metagraph:
        """The subnet at ``block`` (default: the head). Stakes are the subnet's alpha, in whole
        units (a subnet's metagraph tags them alpha; reading them as TAO is refused)."""
        async def read(client: bt.Client):
            view = await client.at(block)  # one block for every read
            return await view.subnets.metagraph(self.netuid, commitments=False)

        graph = await self._call(f"the metagraph at block {block or 'head'}", read)
        if graph is None:
            raise ChainError(f"subnet {self.netuid} does not exist on {self.network}")
        try:
            return Metagraph(
                block=int(graph.block),
                neurons=tuple(
                    Neuron(
                        uid=n.uid,
                        hotkey=n.hotkey,
                        coldkey=n.coldkey,
                        stake=n.total_stake.rao / 1e9,
                        validator_permit=bool(n.validator_permit),
                        endpoint=f"http://{n.axon}" if n.axon else None,
                        registered_at=int(n.block_at_registration),
                    )
                    for n in graph.neurons
                ),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise ChainError(f"the metagraph of subnet {self.netuid} could not be read "
                             f"({type(e).__name__}: {e})") from None

    async def weight_rules(self) -> WeightRules:
        async def read(client: bt.Client):
            view = await client.at(None)
            return await asyncio.gather(*(view.query(item, [self.netuid]) for item in (
                st.WeightsVersionKey, st.MinAllowedWeights, st.MaxWeightsLimit,
                st.WeightsSetRateLimit, st.ActivityCutoff)))

        key, least, most, rate, cutoff = await self._call("the weight settings", read)
        return WeightRules(int(key or 0), int(least or 0),
                           (int(most) if most is not None else U16_MAX) / U16_MAX, int(rate or 0),
                           int(cutoff or 0))

    async def last_update(self, uid: int) -> int:
        """The block this uid last set (or committed) weights at; 0 when never."""
        last = await self._call("LastUpdate", lambda c: c.query(st.LastUpdate, [self.netuid]))
        return int(last[uid]) if isinstance(last, list | tuple) and uid < len(last) else 0

    async def weights_of(self, uid: int) -> dict[int, int]:
        """The weights the chain holds for validator ``uid`` now: {uid: u16}."""
        row = await self._call("the weights on chain",
                               lambda c: c.query(st.Weights, [self.netuid, uid]))
        return {int(d): int(v) for d, v in row or []}

    # -- writes --

    async def set_weights(self, wallet: bt.Wallet, weights: dict[int, float],
                          version_key: int) -> WeightsSent:
        """Set (or, under commit-reveal, commit) ``weights``. A refusal by the rate limit is
        ``RateLimited`` (with the blocks to wait); any other failure a ``ChainError``."""
        intent = bt.SetWeights(netuid=self.netuid, weights=dict(weights), version_key=version_key)
        head = await self.block()
        result = await self._execute("setting weights", intent, wallet)
        reveal_round = result.data.get("reveal_round")
        included = (result.extrinsic_id or "").split("-")[0]
        return WeightsSent(int(included) if included.isdigit() else head,
                           int(reveal_round) if reveal_round is not None else None)

    async def serve(self, wallet: bt.Wallet, host: str, port: int) -> bool:
        """Announce host:port unless the chain holds it already (a re-serve inside the chain's
        serving rate limit is refused whatever its content); True when it was sent."""
        wanted = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        held = (await self.metagraph()).by_hotkey(wallet.hotkey.ss58_address)
        if held is not None and held.endpoint == wanted:
            return False
        await self._execute("serving the axon",
                            bt.ServeAxon(netuid=self.netuid, ip=host, port=port), wallet)
        return True

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            with contextlib.suppress(Exception):
                await self._client.close()

    # -- internals --

    async def _execute(self, what: str, intent, wallet) -> bt.ExtrinsicResult:
        # the SDK resubmits what the pool refused for a while (a nonce race, a low priority)
        result = await self._call(what, lambda c: c.execute(intent, wallet, retries=2),
                                  timeout=SUBMIT_TIMEOUT_S, submitting=True)
        if not result.success:
            error = result.error or bt.ChainError(result.message or "refused")
            raise _translate(what, error)
        return result

    async def _call(self, what: str, call, timeout: float = READ_TIMEOUT_S,
                    submitting: bool = False):
        """``call(client)``, bounded by ``timeout``, with every failure as the project's one
        ``ChainError`` (``RateLimited`` for a rate limit)."""
        try:
            async with self._connecting:
                if not self._connected:
                    await asyncio.wait_for(self._client.connect(), timeout)
                    self._connected = True
            return await asyncio.wait_for(_awaitable(call(self._client)), timeout)
        except ChainError:
            raise
        except TimeoutError:
            raise ChainError(f"{self.network}: {what}: no answer in {timeout:.0f}s",
                             final=submitting) from None  # a submission's fate is unknown
        except Exception as e:  # whatever the SDK raised: the one chain error
            raise _translate(what, e) from None


async def _awaitable(value: Awaitable[T]) -> T:
    return await value


# what the transaction pool says of a transaction it did not take (bittensor's names): temporary,
# unlike a refusal by the chain's rules
TRANSIENT = {"Stale", "Future", "Dropped", "FinalityTimeout", "ExhaustsResources",
             "PriorityTooLow", "Usurped", "TemporarilyBanned", "Retracted", "Invalid"}
RATE_LIMITS = {"SettingWeightsTooFast", "ServingRateLimitExceeded"}


def _translate(what: str, error: BaseException) -> ChainError:
    message = f"{what}: {getattr(error, 'message', None) or error}"
    if isinstance(error, bt.ChainError):
        if error.name in RATE_LIMITS or (error.code is ErrorCode.RATE_LIMITED and not error.name):
            return RateLimited(message, error.name, final=True)
        return ChainError(message, error.name,
                          final=bool(error.name) and error.name not in TRANSIENT)
    return ChainError(f"{message} ({type(error).__name__})")
