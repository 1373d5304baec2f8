"""The subnet as a validator or miner sees it at one block: neurons with their stakes, permits,
endpoints and registration blocks. Plain data, so the pure rules (budgets, plans) use it without
the chain client."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str
    coldkey: str
    stake: float
    validator_permit: bool
    endpoint: str | None  # "http://host:port" the neuron serves on, or None
    registered_at: int  # block


@dataclass(frozen=True)
class Metagraph:
    block: int
    neurons: tuple[Neuron, ...]
    _by_hotkey: dict[str, Neuron] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # every request looks its miner up: an index, not a scan of the subnet (a tenth of the
        # dispatch loop's CPU with 256 miners, scripts/bench_scoring.py)
        index: dict[str, Neuron] = {}
        for n in self.neurons:
            index.setdefault(n.hotkey, n)  # the first, as the scan found it
        object.__setattr__(self, "_by_hotkey", index)

    @property
    def n_uids(self) -> int:
        """Length of a weight vector over these neurons' uids."""
        return max((n.uid for n in self.neurons), default=-1) + 1

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        return self._by_hotkey.get(hotkey)

    def validators(self, min_stake: float = 0.0) -> list[Neuron]:
        """Neurons with a validator permit and at least ``min_stake``."""
        return [n for n in self.neurons if n.validator_permit and n.stake >= min_stake]
