"""Many periods of the real rules with simulated miners and validators, in memory.

Block hashes, audits, test fractions (``core.plan``), period outcomes, states and weights
(``core.scoring``) are the production code; only the miners' behaviour is modelled: a setup can
serve ``capacity`` units of one task per period, shared by all the UIDs it runs, and serves the
requests of a period in proportion when asked for more (refusing the rest with 429s).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from core import plan
from core.budget import Contender
from core.records import Outcome, RequestRecord, summarize
from core.scoring import ContenderState, advance, effective, weights


@dataclass(frozen=True)
class Setup:
    """One operator's hardware for one task, and what it declares on each of its UIDs."""

    name: str
    task: str
    capacity: float  # units per period it can really serve, all UIDs together
    declared: tuple[float, ...]  # one declaration per UID it runs
    registered_at: int = 0


@dataclass
class Result:
    """Reward per setup (sum over periods of its UIDs' stake-weighted weight), and per validator
    the weight vectors of every period."""

    reward: dict[str, float]
    vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)
    audits: int = 0


def block_hash(seed: int, period: int) -> str:
    return "0x" + hashlib.sha256(f"sim:{seed}:{period}".encode()).hexdigest()


def simulate(setups: list[Setup], periods: int, *, stakes: dict[str, float] | None = None,
             seed: int = 0, period_blocks: int = 300) -> Result:
    stakes = stakes or {"validator": 1.0}
    total_stake = sum(stakes.values())
    uids = [(s, i) for s in setups for i in range(len(s.declared))]
    hotkey = {(s.name, i): f"{s.name}/{i}" for s, i in uids}
    uid_of = {hotkey[(s.name, i)]: n for n, (s, i) in enumerate(uids)}
    states = {v: defaultdict(ContenderState) for v in stakes}
    result = Result(reward=defaultdict(float), vectors={v: [] for v in stakes})
    for period in range(periods):
        h = block_hash(seed, period)
        block = (period + 100) * period_blocks
        result.audits += plan.is_audit_period(h)
        for v, stake in stakes.items():
            share = stake / total_stake
            audited = {k for k, st in states[v].items() if st.audited}
            cs = [Contender(uid_of[hotkey[(s.name, i)]], hotkey[(s.name, i)], s.task, s.declared[i],
                            s.declared[i] * share, s.registered_at) for s, i in uids]
            targets = {t.contender.hotkey: t for t in plan.targets(cs, h, block, period_blocks, audited)}
            asked = _asked_by_setup(setups, hotkey, targets, share)
            eff = {}
            for s, i in uids:
                t = targets[hotkey[(s.name, i)]]
                served = min(1.0, s.capacity * share / asked[s.name]) if asked[s.name] else 1.0
                units = t.units
                records = [RequestRecord(period, t.contender.hotkey, s.task, False, Outcome.OK,
                                         units * served, 1.0, 1.0)]
                if served < 1.0:
                    records.append(RequestRecord(period, t.contender.hotkey, s.task, False,
                                                 Outcome.RATE_LIMITED, units * (1 - served), 0.0))
                outcome = summarize(records, t.contender.declared, t.contender.budget, t.f, t.audit)
                key = (t.contender.hotkey, s.task)
                states[v][key] = advance(states[v][key], outcome, share)
                eff[(t.contender.uid, s.task)] = effective(states[v][key])
            vector = weights(eff, len(uids))
            result.vectors[v].append(vector)
            for n, (s, _) in enumerate(uids):
                result.reward[s.name] += vector[n] * share
    result.reward = dict(result.reward)
    return result


def _asked_by_setup(setups, hotkey, targets, share) -> dict[str, float]:
    """Units the whole network asks of each setup this period: every validator asks the same
    fraction of its own share, so the total is ``f x declared`` summed over the setup's UIDs;
    expressed here at this validator's share."""
    return {s.name: sum(targets[hotkey[(s.name, i)]].f * s.declared[i] * share
                        for i in range(len(s.declared))) for s in setups}
