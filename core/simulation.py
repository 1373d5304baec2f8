"""Many periods of the real rules with modelled miners and validators, in memory, paid after Yuma.

The rules are the production code: the windows' block draws and request counts (``core.plan``),
the period step's open and close (``core.period``: budgets, window scores, demonstrated rates,
weights) and Yuma consensus on every validator's weights (``core.yuma``). Only behaviour is
modelled: a ``Setup`` is one operator's hardware, able to serve ``capacity`` units per period
across all the UIDs and tasks it runs and all validators (a unit of each of its tasks costs it the
same GPU time); asked for more at some moment, it serves in proportion (arrival order) or the
most-staked validators first, and refuses the rest. Its strategy decides, before each period
starts, what it declares, whether it answers, and what capacity it rents; nothing it decides can
depend on a window, since no block says when the next one opens.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import plan
from core.budget import Contender
from core.chain_time import PERIOD_BLOCKS
from core.metagraph import Metagraph, Neuron
from core.period import Opening, close_period, open_period
from core.pooling import pool, pool_outside, report_cap
from core.records import NOT_SCORED, Outcome, RequestRecord, tally
from core.scoring import PeriodOutcome, Tally, WindowOutcome, forfeited
from core.tasks import TASKS
from core.yuma import epoch

START_PERIOD = 100


@dataclass(frozen=True)
class Setup:
    """One operator's hardware and how it behaves. Fractions of periods are chosen by the
    operator's own draw before each period."""

    name: str
    capacity: float  # units per period it really serves (without what it rents)
    declared: tuple[float, ...]  # per UID; each UID declares it for every task in ``tasks``
    tasks: tuple[str, ...] = ("inpaint",)
    priority: str = "arrival"  # or "stake": in a crowded moment, the most-staked validators first
    rent: float = 0.0  # extra capacity, x capacity, it rents ...
    rent_share: float = 0.0  # ... for this share of periods, chosen ahead
    rent_late_slices: int | None = None  # ... or in each window, arriving this many slices late
    vary: float = 0.0  # its real capacity each period: uniform in [1 - vary, 1] x capacity
    fail: float = 0.0  # share of requests that fail however idle it is
    outage_windows: tuple[int, ...] = ()  # windows (counted from 0) in which it serves nothing
    silent_share: float = 0.0  # share of periods it does not answer the capacity request
    raise_share: float = 0.0  # share of periods it declares ``raise_by`` x its declaration
    raise_by: float = 1.0
    abandon_every: int = 0  # registers its UIDs anew every this many periods (0: never)
    quality: float = 1.0  # what the validators' checks find (0: a cheater)
    # which requests it attempts (the rest it refuses with ``refusal``): per validator, per slice
    # of each window, and outside windows, where organic and synthetic requests cannot be told
    # apart (docs/protocol.md §8), so one share covers both
    serve_to: tuple[tuple[str, float], ...] = ()  # (validator, share); 1 for any not named
    serve_slices: tuple[float, ...] = ()  # share per slice; 1 for any not given
    outside_served: float = 1.0
    refusal: Outcome = Outcome.UNAUTHORIZED
    declare_to: tuple[tuple[str, float], ...] = ()  # (validator, x its declaration told it)
    silent_to: tuple[str, ...] = ()  # validators whose capacity call it leaves unanswered
    honest: bool = True  # declares what it serves and behaves (for reports)
    twin: str | None = None  # the honest setup of the same cost it is compared with

    @property
    def mean_capacity(self) -> float:
        """What it serves on average: its cost, for comparing with an honest twin."""
        return self.capacity * (1 + self.rent * self.rent_share - self.vary / 2)

    def attempts(self, validator: str, slice_: int | None) -> float:
        """The share of ``validator``'s requests it attempts in a window's slice (None: outside
        windows)."""
        if validator in self.silent_to:
            return 0.0  # unanswered, its requests are refusals (docs/protocol.md §9)
        if slice_ is None:
            return self.outside_served
        by_slice = self.serve_slices[slice_] if slice_ < len(self.serve_slices) else 1.0
        return dict(self.serve_to).get(validator, 1.0) * by_slice

    def told(self, validator: str) -> float | None:
        """x its declaration it tells ``validator``; None: it does not answer it."""
        if validator in self.silent_to:
            return None
        return dict(self.declare_to).get(validator, 1.0)


@dataclass(frozen=True)
class Validator:
    stake: float
    organic: float = 0.0  # share of its budget its users' (organic) traffic uses each period
    # what it publishes in its window reports, per setup named: good = 0; the first slice
    # failed and the rest as measured; every request it planned served
    lies_about: tuple[str, ...] = ()
    fakes_slice_about: tuple[str, ...] = ()
    fabricates_for: tuple[str, ...] = ()


@dataclass
class Result:
    """Per setup: incentive after Yuma summed over periods, and per period; per validator: its
    weight vector and its vtrust every period."""

    reward: dict[str, float]
    per_period: dict[str, list[float]]
    vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)
    vtrust: dict[str, list[float]] = field(default_factory=dict)
    windows: int = 0
    uids: dict[str, list[int]] = field(default_factory=dict)


def block_hashes(seed: int, first: int, n: int) -> list[str]:
    return ["0x" + hashlib.sha256(f"sim:{seed}:{b}".encode()).hexdigest()
            for b in range(first, first + n)]


def _windows(seed: int, periods: int) -> dict[int, list[int]]:
    """Opening blocks per period, from the simulated chain's hashes (the real draw)."""
    w = plan.window_blocks(PERIOD_BLOCKS)
    first = START_PERIOD * PERIOD_BLOCKS - 4 * w
    hashes = block_hashes(seed, first, periods * PERIOD_BLOCKS + 4 * w)
    _, opened = plan.openings(first, hashes, PERIOD_BLOCKS)
    out: dict[int, list[int]] = {}
    for b in opened:
        out.setdefault(b // PERIOD_BLOCKS, []).append(b)
    return out


def _slice_requests(n: int, rng: random.Random) -> list[int]:
    """How the real plan's ``n`` requests (``plan.spread``) fall into the window's slices."""
    counts = [0] * plan.SLICES
    for at in plan.spread(n, rng):
        counts[min(int(at * plan.SLICES), plan.SLICES - 1)] += 1
    return counts


def simulate(setups: list[Setup], periods: int, *, validators: dict[str, Validator] | None = None,
             seed: int = 0, pooled: bool = True,
             progress: Callable[[int], None] | None = None) -> Result:
    """Run ``periods`` periods. ``pooled``: validators score windows from the pooled reports of
    docs/protocol.md §9, as validators do (``core.pooling.pool``), and the signed declarations
    those reports carry expose a miner that told validators different ones (§3): its period is
    zeroed everywhere. Else each validator scores from its own view."""
    validators = validators or {"validator": Validator(1.0)}
    vnames = list(validators)
    stakes = np.array([validators[v].stake for v in vnames], float)
    share = dict(zip(vnames, stakes / stakes.sum()))
    me = {v: f"validator/{v}" for v in vnames}
    uids = [(s, i) for s in setups for i in range(len(s.declared))]
    first_uid = len(vnames)
    hotkey = [f"{s.name}/{i}" for s, i in uids]
    registered = [0] * len(uids)
    rngs = {s.name: np.random.default_rng([seed, zlib.crc32(s.name.encode())]) for s in setups}
    windows_at = _windows(seed, periods)
    w_blocks = plan.window_blocks(PERIOD_BLOCKS)
    states: dict[str, dict] = {v: {} for v in vnames}
    previous: dict[str, list] = {v: [] for v in vnames}
    result = Result({s.name: 0.0 for s in setups}, {s.name: [] for s in setups},
                    {v: [] for v in vnames}, {v: [] for v in vnames})
    offset = first_uid
    for s in setups:
        result.uids[s.name] = list(range(offset, offset + len(s.declared)))
        offset += len(s.declared)
    window_count = 0
    carried: dict[tuple[str, str, str], Tally] = {}  # outside windows since the last window
    jitter = random.Random(seed)  # the validators' private timing jitter
    for step in range(periods):
        period = START_PERIOD + step
        block = period * PERIOD_BLOCKS
        # each operator decides before the period: what it answers, declares, rents
        capacity, rented, declarations = {}, {}, {}
        told: dict[str, dict[str, dict[str, float]]] = {v: {} for v in vnames}
        equivocated: set[str] = set()
        for n, (s, i) in enumerate(uids):
            rng = rngs[s.name]
            if i == 0:
                rented[s.name] = s.rent_share > 0 and rng.random() < s.rent_share
                capacity[s.name] = s.capacity * (1 - s.vary * rng.random()) \
                    + (s.capacity * s.rent if rented[s.name] else 0.0)
                raised = s.raise_share > 0 and rng.random() < s.raise_share
                silent = s.silent_share > 0 and rng.random() < s.silent_share
            if s.abandon_every and step % s.abandon_every == 0 and step:
                registered[n] = block
            if not silent:
                d = s.declared[i] * (s.raise_by if raised else 1.0)
                declarations[hotkey[n]] = {t: d for t in s.tasks}
                said = {v: s.told(v) for v in vnames}
                for v, x in said.items():
                    if x is not None:
                        told[v][hotkey[n]] = {t: d * x for t in s.tasks}
                if pooled and d > 0 and len({x for x in said.values() if x is not None}) > 1:
                    equivocated.add(hotkey[n])
        neurons = [Neuron(k, me[v], "cold", float(validators[v].stake), True, None, 0)
                   for k, v in enumerate(vnames)]
        neurons += [Neuron(first_uid + n, hotkey[n], "cold", 0.0, False, None, registered[n])
                    for n in range(len(uids))]
        metagraph = Metagraph(block, tuple(neurons))
        opened = {v: _adopt(open_period(metagraph, told[v], previous[v], me[v]),
                            {hk: d for hk, d in declarations.items() if hk not in told[v]},
                            metagraph)
                  for v in vnames}
        for v in vnames:
            previous[v] = [(c.hotkey, c.task) for c in opened[v].contenders]
        owner = {hotkey[n]: uids[n][0] for n in range(len(uids))}
        # each validator's tallies of each window, replaced by the pooled outcome when pooled
        slices: dict[tuple[str, str, str, int], Any] = {}
        for b in windows_at.get(period, []):
            _run_window(b, window_count, opened, owner, capacity, share, w_blocks, slices, jitter)
            window_count += 1
        if pooled:
            _pool(slices, opened, share, owner, validators)
        share_in_windows = len(windows_at.get(period, [])) * w_blocks / PERIOD_BLOCKS
        other = _other_traffic(opened, owner, capacity, validators, share_in_windows)
        if pooled:  # a period's requests outside windows are pooled by its next window's reports
            for key, t in other.items():
                carried[key] = carried.get(key, Tally()) + t
            other = {key: Tally() for key in other}
            if windows_at.get(period):
                _pool_outside(other, carried, opened, share, owner, validators)
                carried = {}
        vectors = []
        for v in vnames:
            outcomes = {}
            for c in opened[v].contenders:
                s = owner[c.hotkey]
                key = (v, c.hotkey, c.task)
                ws = tuple(_window(b, slices[(*key, b)])
                           for b in windows_at.get(period, []) if (*key, b) in slices)
                o = other[key]
                checked = bool(o.asked or ws)  # one check a period where it served anything
                outcome = PeriodOutcome(c.declared, ws, o, s.quality if checked else 0.0,
                                        int(checked))
                outcomes[(c.hotkey, c.task)] = (forfeited(outcome) if c.hotkey in equivocated
                                                else outcome)
            closing = close_period(opened[v].contenders, outcomes, states[v], metagraph.n_uids)
            states[v] = {**states[v], **closing.states}
            vectors.append(closing.weights)
            result.vectors[v].append(closing.weights)
        consensus = epoch(np.array(vectors), stakes)
        for k, v in enumerate(vnames):
            result.vtrust[v].append(float(consensus.vtrust[k]) if vectors[k].sum() > 0 else 1.0)
        for s in setups:
            got = float(consensus.incentive[result.uids[s.name]].sum())
            result.reward[s.name] += got
            result.per_period[s.name].append(got)
        if progress:
            progress(1)
    result.windows = window_count
    return result


def _window(block: int, seen: list[Tally] | WindowOutcome) -> WindowOutcome:
    return seen if isinstance(seen, WindowOutcome) else WindowOutcome(block, tuple(seen))


def _adopt(opening: Opening, carried: dict[str, dict[str, float]], metagraph: Metagraph
           ) -> Opening:
    """A validator's opening with the declarations it got no answer for taken from the signed
    ones its peers carry (docs/protocol.md §3): scored against them, its share of them counted
    as refused (``Setup.attempts``)."""
    if not carried:
        return opening
    kept = [c for c in opening.contenders if c.hotkey not in carried]
    for hk, tasks in carried.items():
        n = metagraph.by_hotkey(hk)
        if n is not None:
            kept += [Contender(n.uid, hk, t, d, d * opening.share, n.registered_at)
                     for t, d in tasks.items()]
    return Opening(opening.share, kept)


def _ended(outcome: Outcome, units: float, requests: int) -> Tally:
    """Requests a miner refused as ``outcome``, tallied as the validator's records are."""
    if outcome in NOT_SCORED or units <= 0:
        return Tally()
    t = tally(RequestRecord(0, "", "", False, outcome, units, 0.0))
    return Tally(t.asked, t.good, t.refused, t.failed, requests)


def _run_window(block: int, index: int, opened, owner, capacity: dict[str, float],
                share: dict[str, float], w_blocks: int,
                slices: dict[tuple[str, str, str, int], list[Tally]],
                rng: random.Random) -> None:
    """Every validator sends every contender its window's rate, in the real plan's requests;
    each setup attempts the share of them its strategy picks and serves what its capacity
    allows in each slice (``rent_late_slices``: its rented capacity arrives that many slices
    after the window opened), each request served whole or failed at random: an overloaded
    miner drops requests, it does not serve a fraction of each."""
    demand: dict[tuple[str, str, str], float] = {}
    counts: dict[tuple[str, str, str], tuple[list[int], int]] = {}
    for v, op in opened.items():
        for c in op.contenders:
            rate = plan.window_units(c, PERIOD_BLOCKS)
            n, size = plan.requests_for(c, rate, 0.0)
            if n:
                demand[(v, c.hotkey, c.task)] = rate / plan.SLICES
                counts[(v, c.hotkey, c.task)] = (_slice_requests(n, rng), size)
    slice_share = w_blocks / PERIOD_BLOCKS / plan.SLICES
    for s in sorted({owner[k[1]] for k in demand}, key=lambda s: s.name):  # draws in one order
        mine = [k for k in demand if owner[k[1]] is s]
        for j in range(plan.SLICES):
            cap = capacity[s.name] * slice_share
            if s.rent_late_slices is not None and j >= s.rent_late_slices:
                cap += s.capacity * s.rent * slice_share
            if index in s.outage_windows:
                cap = 0.0
            tried = {k: s.attempts(k[0], j) for k in mine}
            served = _serve(s, mine, {k: demand[k] * tried[k] for k in mine}, cap, share)
            for k in mine:
                per_slice, size = counts[k]
                # each request ends one way: attempted or refused, then served or failed
                attempted = sum(rng.random() < tried[k] for _ in range(per_slice[j]))
                good = sum(rng.random() < served[k] * (1 - s.fail) for _ in range(attempted))
                refused = _ended(s.refusal, (per_slice[j] - attempted) * size,
                                 per_slice[j] - attempted)
                tallies = slices.setdefault((*k, block), [Tally()] * plan.SLICES)
                tallies[j] = refused + Tally(attempted * size, good * size, 0.0,
                                             (attempted - good) * size, attempted)


def _pool(slices: dict, opened, share: dict[str, float], owner,
          validators: dict[str, Validator]) -> None:
    """Replace each validator's view of each window by the pooled reports (``core.pooling``),
    each validator publishing what it chooses to (``Validator``: lies and fabrications)."""
    groups: dict[tuple[str, str, int], dict[str, WindowOutcome]] = {}
    for (v, hk, task, block), tallies in slices.items():
        groups.setdefault((hk, task, block), {})[v] = WindowOutcome(
            block, tuple(_published(validators[v], owner[hk].name, tallies)))
    budgets = {(v, c.hotkey, c.task): c for v, op in opened.items() for c in op.contenders}
    for (hk, task, block), reports in groups.items():
        caps = {v: report_cap(budgets[(v, hk, task)], share[v], PERIOD_BLOCKS) for v in reports}
        pooled = pool(reports, share, caps)
        if pooled is not None:
            for v in opened:
                if (v, hk, task) in budgets:
                    slices[(v, hk, task, block)] = pooled


def _pool_outside(other: dict, carried: dict, opened, share: dict[str, float], owner,
                  validators: dict[str, Validator]) -> None:
    """Score each validator's requests outside windows as the pooled ones
    (``core.pooling.pool_outside``) of those ``carried`` since the last window, as the window
    reports carry them; none where the reports are no evidence."""
    groups: dict[tuple[str, str], dict[str, Tally]] = {}
    for (v, hk, task), t in carried.items():
        groups.setdefault((hk, task), {})[v] = _published(validators[v], owner[hk].name, [t])[0]
    declared = {(c.hotkey, c.task): c.declared for op in opened.values() for c in op.contenders}
    for (hk, task), tallies in groups.items():
        if (hk, task) not in declared:
            continue
        pooled = pool_outside(tallies, share, declared[(hk, task)])
        if pooled is not None:
            for v in tallies:
                if (v, hk, task) in other:
                    other[(v, hk, task)] = pooled


def _published(v: Validator, setup: str, tallies: list[Tally]) -> list[Tally]:
    """What validator ``v`` reports of a setup's window it measured as ``tallies``."""
    if setup in v.lies_about:
        return [t.all_failed() for t in tallies]
    if setup in v.fakes_slice_about:
        return [tallies[0].all_failed(), *tallies[1:]]
    if setup in v.fabricates_for:
        return [Tally(t.asked, t.asked, 0.0, 0.0, t.requests) for t in tallies]
    return tallies


def _serve(s: Setup, keys: list, demand: dict, cap: float, share: dict[str, float]) -> dict:
    """The fraction of each stream's demand a setup serves with ``cap`` units: in proportion
    (arrival order), or the most-staked validators' streams first."""
    total = sum(demand[k] for k in keys)
    if s.priority != "stake":
        fraction = min(1.0, cap / total) if total > 0 else 1.0
        return {k: fraction for k in keys}
    out = {}
    for k in sorted(keys, key=lambda k: -share[k[0]]):
        take = min(demand[k], cap)
        out[k] = take / demand[k] if demand[k] > 0 else 1.0
        cap -= take
    return out


def _other_traffic(opened, owner, capacity: dict[str, float], validators: dict[str, Validator],
                   in_windows: float) -> dict[tuple[str, str, str], Tally]:
    """Background and organic requests outside windows: the share a setup attempts, served in
    proportion when they ask more than its capacity outside windows."""
    asked: dict[tuple[str, str, str], tuple[float, int]] = {}
    for v, op in opened.items():
        for c in op.contenders:
            per = TASKS[c.task].units_per_synthetic
            n_bg = round(plan.BACKGROUND * c.budget / per)
            organic = validators[v].organic * c.budget * (1 - in_windows)
            units = n_bg * per + organic
            asked[(v, c.hotkey, c.task)] = (units, n_bg + round(organic / per))
    out = {}
    for s in {owner[k[1]] for k in asked}:
        mine = [k for k in asked if owner[k[1]] is s]
        total = sum(asked[k][0] for k in mine) * s.outside_served
        room = capacity[s.name] * (1 - in_windows)
        fraction = min(1.0, room / total) if total > 0 else 1.0
        for k in mine:
            units, n = asked[k]
            attempted = units * s.outside_served
            good = attempted * fraction * (1 - s.fail)
            refused = _ended(s.refusal, units - attempted, round(n * (1 - s.outside_served)))
            out[k] = refused + Tally(attempted, good, 0.0, attempted - good, n - refused.requests)
    return out
