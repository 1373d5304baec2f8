"""Many periods of the real rules with modelled miners and validators, in memory.

Block hashes, audits, test fractions (``core.plan``), period outcomes, contender states and weights
(``core.scoring``) are the production code. Only behaviour is modelled: a ``Setup`` is one
operator's hardware for one task, able to serve ``capacity`` units per period across all the
UIDs it runs and all validators; asked for more, it serves in proportion (or the most-staked
validators first) and refuses the rest with 429s. Validators differ in stake and in how much of
their budget their own users' (organic) traffic uses.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core import plan
from core.budget import Contender
from core.records import Outcome, RequestRecord, summarize
from core.scoring import ContenderState, advance, effective, speed_factor, weights
from core.tasks import TASKS

PERIOD_BLOCKS = 300
START_PERIOD = 100  # the simulated chain's first period: UIDs registered at block 0 are established


@dataclass(frozen=True)
class Setup:
    """One operator's hardware for one task, and how it behaves."""

    name: str
    task: str
    capacity: float  # units per period it can really serve, all UIDs and validators together
    declared: tuple[float, ...]  # one declaration per UID it runs
    registered: tuple[int, ...] = ()  # period each UID registers (default: long before the start)
    priority: str = "proportional"  # or "stake": serve the most-staked validators first
    slowness: float = 1.0  # latency as a multiple of the task's expected time
    refuse: float = 0.0  # share of every request stream answered 429 however idle it is
    quality: float = 1.0  # what the validators' checks find (0: a cheater caught by checking)
    honest: bool = True  # for reports: declares what it serves and behaves

    def registered_at(self, i: int) -> int:
        """Registration block of UID ``i``: block 0 (long established) unless ``registered``
        names the simulated period it joins in."""
        return (START_PERIOD + self.registered[i]) * PERIOD_BLOCKS if self.registered else 0


@dataclass(frozen=True)
class Validator:
    stake: float
    organic: float = 0.0  # share of its budget its users' traffic uses each period


@dataclass
class Result:
    """Per setup: total reward (stake-weighted weight of its UIDs, summed over periods) and reward
    per period; per validator: its weight vector every period."""

    reward: dict[str, float]
    per_period: dict[str, list[float]]
    vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)
    audits: int = 0


def block_hash(seed: int, period: int) -> str:
    return "0x" + hashlib.sha256(f"sim:{seed}:{period}".encode()).hexdigest()


def simulate(setups: list[Setup], periods: int, *, validators: dict[str, Validator] | None = None,
             stakes: dict[str, float] | None = None, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> Result:
    """Run ``periods`` periods. ``stakes`` is a shorthand for synthetic-only validators."""
    validators = validators or {v: Validator(s) for v, s in (stakes or {"validator": 1.0}).items()}
    total_stake = sum(v.stake for v in validators.values())
    share = {name: v.stake / total_stake for name, v in validators.items()}
    uids = [(s, i) for s in setups for i in range(len(s.declared))]
    hotkeys = [f"{s.name}/{i}" for s, i in uids]
    states = {v: defaultdict(ContenderState) for v in validators}
    result = Result(reward={s.name: 0.0 for s in setups}, per_period={s.name: [] for s in setups},
                    vectors={v: [] for v in validators})
    for step in range(periods):
        period = START_PERIOD + step
        h = block_hash(seed, period)
        result.audits += plan.is_audit_period(h)
        live = [n for n, (s, i) in enumerate(uids) if _registered(s, i, period)]
        targets = {}
        for v in validators:
            audited = {k for k, st in states[v].items() if st.audited}
            cs = [Contender(n, hotkeys[n], uids[n][0].task, uids[n][0].declared[uids[n][1]],
                            uids[n][0].declared[uids[n][1]] * share[v],
                            uids[n][0].registered_at(uids[n][1])) for n in live]
            for t in plan.targets(cs, h, period * PERIOD_BLOCKS, PERIOD_BLOCKS, audited):
                targets[(v, t.contender.uid)] = t
        served = _serve(setups, uids, live, targets, validators, share)
        earned = {s.name: 0.0 for s in setups}
        for v, val in validators.items():
            eff = {}
            for n in live:
                s, _ = uids[n]
                t = targets[(v, n)]
                asked = max(t.units, val.organic * t.contender.budget)
                outcome = summarize(_records(s, t, asked, served[(v, n)]), t.contender.declared,
                                    t.contender.budget, t.f, t.audit)
                key = (t.contender.hotkey, s.task)
                states[v][key] = advance(states[v][key], outcome, share[v])
                eff[(n, s.task)] = effective(states[v][key])
            vector = weights(eff, len(uids))
            result.vectors[v].append(vector)
            for n, (s, _) in enumerate(uids):
                earned[s.name] += vector[n] * share[v]
        for name, value in earned.items():
            result.reward[name] += value
            result.per_period[name].append(value)
        if progress:
            progress(1)
    return result


def _registered(s: Setup, i: int, period: int) -> bool:
    return not s.registered or START_PERIOD + s.registered[i] <= period


def _serve(setups, uids, live, targets, validators, share) -> dict[tuple[str, int], float]:
    """Share of what each validator asks of each UID that its setup serves this period: organic
    traffic and synthetic tests together, from all validators, against the setup's capacity."""
    asked = {(v, n): max(targets[(v, n)].units, val.organic * targets[(v, n)].contender.budget)
             for v, val in validators.items() for n in live}
    out = {}
    for s in setups:
        mine = [(v, n) for (v, n) in asked if uids[n][0] is s]
        left = s.capacity
        if s.priority == "stake":
            for v, n in sorted(mine, key=lambda k: -share[k[0]]):
                take = min(asked[(v, n)], left)
                out[(v, n)] = take / asked[(v, n)] if asked[(v, n)] else 1.0
                left -= take
        else:
            total = sum(asked[k] for k in mine)
            for k in mine:
                out[k] = min(1.0, s.capacity / total) if total else 1.0
    return out


def _records(s: Setup, t: plan.Target, asked: float, served: float) -> list[RequestRecord]:
    """The period's requests to one UID from one validator, summarised as one record per kind."""
    task = TASKS[s.task]
    good = asked * served * (1 - s.refuse)
    expected = task.expected_seconds(task.units_per_synthetic)
    quality = speed_factor(expected * s.slowness, expected) * s.quality
    records = [RequestRecord(0, t.contender.hotkey, s.task, False, Outcome.OK, good,
                             expected * s.slowness, quality)]
    if asked - good > 0:
        records.append(RequestRecord(0, t.contender.hotkey, s.task, False,
                                     Outcome.RATE_LIMITED, asked - good, 0.0))
    return records
