"""A search over miner strategies for the one that beats an honest twin of the same cost
(docs/protocol.md §11), on the simulator's real period step, pooling and Yuma.

A list of named strategies only tests what its author thought of; this module describes a space
(``Genome``: what to declare and to whom, which validators and which minutes of a window to
serve, how to refuse, what to serve outside windows, capacity rented for some periods, a
validator that fabricates service for the miner) and searches it: random genomes first,
then mutations of the best found (a small evolutionary search; the space mixes discrete and
continuous choices, and a run of a few hundred evaluations is what a test can afford, so a
hand-written loop over ``numpy``'s generator is simpler than an optimiser's adapter). Each
genome's fitness is its incentive after Yuma divided by its twin's, averaged over seeds.

Validators: ``core.scenarios.VALIDATORS``, ten of 30% down to 1% of the stake. Capacity rented
once a window has opened (``Genome.rent_late``) is left out of the search: the reports see too
few requests in a window's first minute to tell it from capacity held all period, and
``named_cases`` measures it apart as the limit it is (docs/protocol.md §11).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.plan import SLICES
from core.pooling import most_lowered
from core.records import Outcome
from core.scenarios import POOL, STAKES, VALIDATORS, C, Strategy
from core.simulation import Setup, Validator, simulate

REFUSALS = (Outcome.UNAUTHORIZED, Outcome.RATE_LIMITED, Outcome.SERVER_ERROR, Outcome.TIMEOUT,
            Outcome.INVALID)


@dataclass(frozen=True)
class Genome:
    """One strategy: every choice the space offers."""

    declare: float = 1.0  # x its capacity
    serve_to: tuple[float, ...] = (1.0,) * len(STAKES)  # share attempted, per validator
    slices: tuple[float, ...] = (1.0,) * SLICES  # share attempted in each slice of a window
    outside: float = 1.0  # share attempted outside windows, organic and synthetic alike
    priority: str = "arrival"  # or "stake": crowded, it serves the most-staked first
    refusal: Outcome = Outcome.UNAUTHORIZED
    rent: float = 0.0  # extra capacity, x its own ...
    rent_share: float = 0.0  # ... in this share of periods, chosen ahead
    rent_late: int | None = None  # ... or in every window, arriving this many slices late
    declare_to: tuple[float, ...] = (1.0,) * len(STAKES)  # x its declaration told each one
    silent_to: tuple[bool, ...] = (False,) * len(STAKES)
    colluder: int | None = None  # the validator (index) that fabricates service for it

    def setup(self) -> Setup:
        names = list(VALIDATORS)
        return Setup(
            "strategy", C, (C * self.declare,), priority=self.priority, rent=self.rent,
            rent_share=self.rent_share, rent_late_slices=self.rent_late,
            serve_to=tuple(zip(names, self.serve_to)), serve_slices=self.slices,
            outside_served=self.outside, refusal=self.refusal,
            declare_to=tuple(zip(names, self.declare_to)),
            silent_to=tuple(n for n, s in zip(names, self.silent_to) if s), honest=False)

    def validators(self) -> dict[str, Validator]:
        if self.colluder is None:
            return VALIDATORS
        name = list(VALIDATORS)[self.colluder]
        return {**VALIDATORS, name: replace(VALIDATORS[name], fabricates_for=("strategy",))}

    def describe(self) -> str:
        """The choices that differ from honest service, in words."""
        out = [f"declares x{self.declare:.2f}"]
        names = list(VALIDATORS)
        served = [f"{n} {s:.0%}" for n, s in zip(names, self.serve_to) if s < 0.995]
        if served:
            out.append("serves " + ", ".join(served))
        minutes = [f"{j} {x:.0%}" for j, x in enumerate(self.slices) if x < 0.995]
        if minutes:
            out.append("minutes " + ", ".join(minutes))
        if self.outside < 0.995:
            out.append(f"outside windows {self.outside:.0%}")
        if self.priority != "arrival":
            out.append("stake-first")
        if served or minutes or self.outside < 0.995:
            out.append(f"refuses with {self.refusal.value}")
        if self.rent_share:
            out.append(f"rents x{self.rent:.2f} in {self.rent_share:.0%} of periods")
        if self.rent_late is not None:
            out.append(f"rents x{self.rent:.2f} arriving {self.rent_late} slice(s) late")
        told = [f"{n} x{x:.2f}" for n, x in zip(names, self.declare_to) if abs(x - 1) > 1e-9]
        if told:
            out.append("tells " + ", ".join(told))
        silent = [n for n, s in zip(names, self.silent_to) if s]
        if silent:
            out.append("silent to " + ", ".join(silent))
        if self.colluder is not None:
            out.append(f"{names[self.colluder]} fabricates its service")
        return "; ".join(out)


def colluder_stake(g: Genome) -> float:
    return 0.0 if g.colluder is None else STAKES[g.colluder]


def bound(g: Genome) -> float:
    """What the rules guarantee of ``g`` against its twin (docs/protocol.md §11): 1 for any
    miner on its own; with a colluding validator of stake s, 1 / (1 - s), the fake of its own
    share that no report-based rule can tell from service."""
    return 1.0 / (1.0 - colluder_stake(g))


def fitness(g: Genome, periods: int, seeds: tuple[int, ...], pooled: bool = True) -> float:
    """Incentive after Yuma over its twin's (honest, of the same mean capacity), mean over
    ``seeds``; ``pooled``: validators pool their window reports (else each its own view)."""
    setup = g.setup()
    twin = Setup("twin", setup.mean_capacity, (setup.mean_capacity,))
    ratios = []
    for seed in seeds:
        r = simulate([*POOL, twin, setup], periods, validators=g.validators(), seed=seed,
                     pooled=pooled)
        ratios.append(r.reward["strategy"] / r.reward["twin"] if r.reward["twin"] > 0 else 0.0)
    return float(np.mean(ratios))


def random_genome(rng: np.random.Generator, colluders: bool) -> Genome:
    """A genome with each choice departing from honest service at random."""
    n = len(STAKES)

    def shares(p: float) -> tuple[float, ...]:
        return tuple(float(rng.choice([0.0, rng.uniform(), 1.0])) if rng.random() < p else 1.0
                     for _ in range(n))

    rent_share = float(rng.uniform()) if rng.random() < 0.2 else 0.0
    return Genome(
        declare=float(rng.choice([1.0, rng.uniform(0.5, 3.0)])),
        serve_to=shares(float(rng.uniform())),
        slices=tuple(float(rng.choice([1.0, 1.0, 0.0, rng.uniform()])) if rng.random() < 0.3
                     else 1.0 for _ in range(SLICES)),
        outside=float(rng.choice([1.0, 0.0, rng.uniform()])),
        priority=str(rng.choice(["arrival", "stake"])),
        refusal=REFUSALS[int(rng.integers(len(REFUSALS)))],
        rent=float(rng.uniform(0.0, 2.0)) if rent_share else 0.0, rent_share=rent_share,
        declare_to=tuple(float(rng.choice([0.0, 0.5, 2.0])) if rng.random() < 0.1 else 1.0
                         for _ in range(n)),
        silent_to=tuple(bool(rng.random() < 0.1) for _ in range(n)),
        colluder=int(rng.integers(n)) if colluders and rng.random() < 0.5 else None)


def mutate(g: Genome, rng: np.random.Generator, colluders: bool) -> Genome:
    """``g`` with one to three of its choices drawn anew or nudged."""
    other = random_genome(rng, colluders)
    fields = ["declare", "serve_to", "slices", "outside", "priority", "refusal", "rent",
              "declare_to", "silent_to", "colluder"]
    changes: dict[str, Any] = {}
    for name in rng.choice(fields, size=int(rng.integers(1, 4)), replace=False):
        if name == "declare":
            changes["declare"] = float(np.clip(g.declare * rng.lognormal(0, 0.15), 0.3, 4.0))
        elif name == "serve_to":
            values = np.clip(np.array(g.serve_to) + rng.normal(0, 0.2, len(STAKES)), 0, 1)
            changes["serve_to"] = tuple(float(v) for v in values)
        elif name == "rent":
            changes.update(rent=other.rent, rent_share=other.rent_share)
        else:
            changes[name] = getattr(other, name)
    return replace(g, **changes)


@dataclass(order=True)
class Found:
    """A genome and how it did: ``excess`` is its ratio over its bound."""

    excess: float
    ratio: float = field(compare=False)
    genome: Genome = field(compare=False)


def search(evaluations: int, periods: int, seeds: tuple[int, ...], rng: np.random.Generator,
           colluders: bool = True, keep: int = 8,
           progress: Callable[[int], None] | None = None) -> list[Found]:
    """The ``keep`` genomes found with the highest ratio to their bound: half the evaluations
    random, half mutations of the best so far."""
    found: list[Found] = []

    def evaluate(g: Genome) -> None:
        ratio = fitness(g, periods, seeds)
        found.append(Found(ratio / bound(g), ratio, g))
        if progress:
            progress(1)

    for _ in range(evaluations // 2):
        evaluate(random_genome(rng, colluders))
    for _ in range(evaluations - evaluations // 2):
        best = sorted(found, reverse=True)[:keep]
        evaluate(mutate(best[int(rng.integers(len(best)))].genome, rng, colluders))
    return sorted(found, reverse=True)[:keep]


def as_strategy(g: Genome, name: str) -> Strategy:
    setup = g.setup()
    return Strategy(name, g.describe(), setup,
                    Setup("twin", setup.mean_capacity, (setup.mean_capacity,)))


def _serving(names: tuple[str, ...]) -> tuple[float, ...]:
    return tuple(1.0 if n in names else 0.0 for n in VALIDATORS)


def _index(name: str) -> int:
    return list(VALIDATORS).index(name)


def named_cases() -> list[tuple[str, Genome, bool]]:
    """The strategies issue reports measured, as genomes: (name, genome, pooled)."""
    n = len(STAKES)
    out = [
        ("refusal k=2: serves v30+v20, 403s the rest",
         Genome(declare=2.0, serve_to=_serving(("v30", "v20-organic"))), True),
        ("refusal k=4: serves v20+v05, 403s the rest",
         Genome(declare=4.0, serve_to=_serving(("v20-organic", "v05"))), True),
        ("organic refusal: refuses everything outside windows", Genome(outside=0.0), True),
        ("per-validator declarations: x2 to all but v20, 0 to it",
         Genome(declare=2.0, declare_to=tuple(0.0 if v == "v20-organic" else 1.0
                                              for v in VALIDATORS)), True),
        ("silent to v20, declares x1.25 (what it serves the rest)",
         Genome(declare=1.25, silent_to=tuple(v == "v20-organic" for v in VALIDATORS)), True),
    ]
    for k in (1.1, 1.3, 1.5, 1.7, 2.0, 3.0):
        out.append((f"stake-first k={k:g}", Genome(declare=k, priority="stake"), True))
    for pooled in (True, False):
        view = "pooled" if pooled else "own view"
        out.append((f"rent x2 a minute into each window, declares x3 ({view}) [limit]",
                    Genome(declare=3.0, rent=2.0, rent_late=1), pooled))
        out.append((f"rent x9 as a window opens, declares x10 ({view}) [limit]",
                    Genome(declare=10.0, rent=9.0, rent_late=0), pooled))
    for name in ("v01", "v10", "v30"):
        i = _index(name)
        out.append((f"colluder {name}: serves only it, which fabricates the rest",
                    Genome(serve_to=tuple(1.0 if j == i else 0.0 for j in range(n)),
                           colluder=i), True))
        out.append((f"colluder {name}: fakes its own share [limit]",
                    Genome(declare=1 / (1 - STAKES[i]),
                           serve_to=tuple(0.0 if j == i else 1.0 for j in range(n)),
                           colluder=i), True))
    return out


def liar_cases(periods: int, seeds: tuple[int, ...]) -> list[tuple[str, float, float]]:
    """(case, an honest victim's reward over its twin's, the least the rules guarantee it) with a
    validator of stake s (the others scaled to 1 - s) publishing good = 0 about the victim, or
    its first slice failed."""
    out = []
    for s in (0.05, 0.10, 0.20, 0.30):
        for how, liar in (("good = 0", Validator(s, lies_about=("victim",))),
                          ("fake slices", Validator(s, fakes_slice_about=("victim",)))):
            validators = {k: replace(v, stake=v.stake * (1 - s)) for k, v in VALIDATORS.items()}
            validators["liar"] = liar
            ratios = []
            for seed in seeds:
                r = simulate([*POOL, Setup("twin", C, (C,)), Setup("victim", C, (C,))], periods,
                             validators=validators, seed=seed)
                ratios.append(r.reward["victim"] / r.reward["twin"])
            out.append((f"liar {s:.2f} ({how})", float(np.mean(ratios)), 1 - most_lowered(s)))
    return out
