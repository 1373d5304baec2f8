"""The production chain: bittensor's async client on finney, test, local or a ws(s):// endpoint.

Weights go through ``bittensor.SetWeights``, which clips to the subnet's max-weight limit,
quantises to u16 and picks plain or commit-reveal submission itself.
"""

from __future__ import annotations

import bittensor as bt

from core.chain import Metagraph, Neuron


class SubtensorChain:
    def __init__(self, network: str, netuid: int):
        self.network = network
        self.netuid = netuid
        self._client = bt.Client(network)
        self._connected = False

    async def _ready(self) -> bt.Client:
        if not self._connected:
            await self._client.connect()
            self._connected = True
        return self._client

    async def block(self) -> int:
        return await (await self._ready()).block()

    async def block_hash(self, block: int) -> str:
        info = await (await self._ready()).block_info(block)
        if info is None or not info.hash:
            raise RuntimeError(f"block {block} not found on {self.network}")
        return info.hash

    async def block_time(self) -> float:
        return await (await self._ready()).block_time()

    async def tempo(self) -> int:
        graph = await self._raw_metagraph()
        return int(graph.tempo)

    async def metagraph(self, block: int | None = None) -> Metagraph:
        graph = await self._raw_metagraph(block)
        return Metagraph(
            block=int(graph.block),
            neurons=tuple(
                Neuron(
                    uid=n.uid,
                    hotkey=n.hotkey,
                    coldkey=n.coldkey,
                    stake=float(n.total_stake.tao),
                    validator_permit=bool(n.validator_permit),
                    endpoint=f"http://{n.axon}" if n.axon else None,
                    registered_at=int(n.block_at_registration),
                )
                for n in graph.neurons
            ),
        )

    async def set_weights(self, wallet: bt.Wallet, weights: dict[int, float]) -> None:
        client = await self._ready()
        intent = bt.SetWeights(netuid=self.netuid, weights=dict(weights))
        (await client.execute(intent, wallet)).raise_for_failure()

    async def serve(self, wallet: bt.Wallet, host: str, port: int) -> None:
        client = await self._ready()
        intent = bt.ServeAxon(netuid=self.netuid, ip=host, port=port)
        (await client.execute(intent, wallet)).raise_for_failure()

    async def close(self) -> None:
        if self._connected:
            await self._client.close()
            self._connected = False

    async def _raw_metagraph(self, block: int | None = None):
        view = await (await self._ready()).at(block)  # one block for every read
        graph = await view.subnets.metagraph(self.netuid, commitments=False)
        if graph is None:
            raise RuntimeError(f"subnet {self.netuid} does not exist on {self.network}")
        return graph
