"""Stake share and per-contender budgets (docs/protocol.md §3.2), from the metagraph at the
period's start block."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.metagraph import Metagraph


@dataclass(frozen=True)
class Contender:
    """One (miner, task) as this validator sees it in one period."""

    uid: int
    hotkey: str
    task: str
    declared: float  # clamped, the miner's total for all validators
    budget: float  # declared x share: what this validator may spend on it
    registered_at: int


def stake_share(metagraph: Metagraph, hotkey: str) -> float:
    """``my stake / total stake of validators with a permit``; 0 for a hotkey without a permit."""
    validators = metagraph.validators()
    total = sum(n.stake for n in validators)
    me = next((n for n in validators if n.hotkey == hotkey), None)
    if me is None or total <= 0:
        return 0.0
    return me.stake / total


def contenders(metagraph: Metagraph, declarations: Mapping[str, Mapping[str, float]],
               share: float) -> list[Contender]:
    """Every (miner, task) with a clamped declaration, with its budget at this share."""
    out = []
    for neuron in metagraph.neurons:
        for task, declared in sorted(declarations.get(neuron.hotkey, {}).items()):
            out.append(Contender(neuron.uid, neuron.hotkey, task, declared, declared * share,
                                 neuron.registered_at))
    return out
