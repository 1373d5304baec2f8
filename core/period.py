"""One period step, open and close (docs/protocol.md §3-4): the validator's loop, its ``--status``,
the simulator and the property tests all run these two functions, so the rules they check are the
rules the validator applies.

``open_period`` turns the metagraph at the period's start block and the miners' declarations into
this validator's share and its contenders' budgets; ``close_period`` turns each contender's
measured outcome into its new state, effective capacity, the weight vector and the report rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from core.budget import Contender, contenders, stake_share
from core.metagraph import Metagraph
from core.scoring import ContenderState, PeriodOutcome, advance, effective, weights

Key = tuple[str, str]  # (hotkey, task)


@dataclass(frozen=True)
class Opening:
    share: float
    contenders: list[Contender]


def open_period(metagraph: Metagraph, declarations: Mapping[str, Mapping[str, float]],
                previous: Iterable[Key], me: str) -> Opening:
    """Budgets for a period. A miner that did not answer, or left out a task it declared last
    period (``previous``), declares 0 for it: the contender stays and is scored (budget 0)."""
    declared = {hk: dict(tasks) for hk, tasks in declarations.items() if hk != me}
    for hotkey, task in previous:
        if hotkey != me and metagraph.by_hotkey(hotkey) is not None:
            declared.setdefault(hotkey, {}).setdefault(task, 0.0)
    share = stake_share(metagraph, me)
    return Opening(share, contenders(metagraph, declared, share))


@dataclass(frozen=True)
class Row:
    """One contender's line in the period table."""

    contender: Contender
    outcome: PeriodOutcome
    state: ContenderState
    requests: int
    effective: float


@dataclass(frozen=True)
class Closing:
    states: dict[Key, ContenderState]
    weights: np.ndarray
    rows: list[Row]


def close_period(contenders: Iterable[Contender], outcomes: Mapping[Key, PeriodOutcome],
                 states: Mapping[Key, ContenderState], n_uids: int,
                 requests: Mapping[Key, int] | None = None) -> Closing:
    """Fold each contender's outcome into its state, then weights from everyone's effective
    capacity. A contender without an outcome is scored as asked nothing."""
    new: dict[Key, ContenderState] = {}
    rows = []
    eff: dict[tuple[int, str], float] = {}
    for c in contenders:
        key = (c.hotkey, c.task)
        outcome = outcomes.get(key, PeriodOutcome(c.declared))
        new[key] = advance(states.get(key, ContenderState(registered_at=c.registered_at)),
                           outcome, c.registered_at)
        eff[(c.uid, c.task)] = effective(new[key])
        rows.append(Row(c, outcome, new[key], (requests or {}).get(key, 0),
                        eff[(c.uid, c.task)]))
    return Closing(new, weights(eff, n_uids), rows)
