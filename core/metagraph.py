"""The subnet as a validator or miner sees it at one block: neurons with their stakes, permits,
endpoints and registration blocks. Plain data, so the pure rules (budgets, plans) use it without
the chain client."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def n_uids(self) -> int:
        """Length of a weight vector over these neurons' uids."""
        return max((n.uid for n in self.neurons), default=-1) + 1

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        return next((n for n in self.neurons if n.hotkey == hotkey), None)

    def validators(self, min_stake: float = 0.0) -> list[Neuron]:
        """Neurons with a validator permit and at least ``min_stake``."""
        return [n for n in self.neurons if n.validator_permit and n.stake >= min_stake]
