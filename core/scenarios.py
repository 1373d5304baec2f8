"""The simulator's strategies, each run beside an honest twin of the same cost, and custom
scenarios from YAML (validated with the errors operators expect).

A strategy's verdict is its incentive after Yuma divided by its twin's, in a pool of honest
miners and validators of stakes down to 1%, some organic-heavy (docs/protocol.md §4's
properties).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.simulation import Result, Setup, Validator, simulate
from core.tasks import TASK_IDS, TASKS

# ten validators of 30% down to 1% of the stake, two of them organic-heavy
STAKES = (0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01)
ORGANIC = {0.20: 0.6, 0.08: 0.3}
VALIDATORS = {f"v{round(s * 100):02d}{'-organic' if s in ORGANIC else ''}":
              Validator(s, ORGANIC.get(s, 0.0)) for s in STAKES}
POOL = tuple(Setup(f"honest-{c}", c, (c,)) for c in (250, 500, 2000))
C = 1000.0  # the strategic miner's own capacity (inpaint steps a period)
CAP = TASKS["inpaint"].max_capacity


@dataclass(frozen=True)
class Strategy:
    name: str
    about: str
    setup: Setup  # named "strategy"
    twin: Setup  # named "twin": honest, of the strategy's mean capacity (its cost)
    limit: bool = False  # a measured limit of the rules, reported rather than asserted
    # earns what its twin does (asserted as such): it changes nothing but how many UIDs serve,
    # and a UID's registration, not modelled here, makes it a loss
    even: bool = False


def _twin(s: Setup) -> Setup:
    return Setup("twin", s.mean_capacity, (s.mean_capacity,), s.tasks)


def _strategy(name: str, about: str, limit: bool = False, twin: Setup | None = None,
              even: bool = False, **behaviour) -> Strategy:
    setup = Setup("strategy", **{"capacity": C, "declared": (C,), **behaviour}, honest=False)
    return Strategy(name, about, setup, twin or _twin(setup), limit, even)


def strategies() -> list[Strategy]:
    out = [_strategy(f"over-claim x{k:g}", f"declares {k:g}x what it serves", declared=(C * k,))
           for k in (1.02, 1.05, 1.1, 1.25, 1.5, 2, 10)]
    out += [
        _strategy("rent half the periods", "declares 2x; rents the other 1x in half the periods, "
                  "chosen ahead", declared=(2 * C,), rent=1.0, rent_share=0.5),
        _strategy("rent 90% of periods", "declares 2x; rents the other 1x in 90% of periods",
                  declared=(2 * C,), rent=1.0, rent_share=0.9),
        _strategy("rent once a window opens", "declares 3x; its rented 2x arrives one slice "
                  "(a minute) after each window opens", limit=True, declared=(3 * C,), rent=2.0,
                  rent_late_slices=1),
        _strategy("silent 30% of periods", "does not answer the capacity request in 30% of "
                  "periods (serves elsewhere)", silent_share=0.3),
        _strategy("raise 2x in 30% of periods", "declares 2x in 30% of periods, chosen ahead",
                  raise_share=0.3, raise_by=2.0),
        _strategy("lower to half in 30% of periods", "declares half in 30% of periods",
                  raise_share=0.3, raise_by=0.5),
        _strategy("abandon the UID after 30", "declares 2x, registers anew every 30 periods",
                  declared=(2 * C,), abandon_every=30),
        _strategy("abandon the UID after 100", "declares 2x, registers anew every 100 periods",
                  declared=(2 * C,), abandon_every=100),
        _strategy("stake-first", "declares 2x; in a crowded moment serves the most-staked "
                  "validators first", declared=(2 * C,), priority="stake"),
        _strategy("one GPU for 4 UIDs", "runs 4 UIDs on one GPU, each declaring all of it",
                  declared=(C,) * 4),
        _strategy("one GPU for 2 tasks", "declares all of one GPU for each of two tasks",
                  tasks=("inpaint", "proteus-text-to-image"),
                  twin=Setup("twin", C, (C / 2,), ("inpaint", "proteus-text-to-image"))),
        _strategy("split under the cap", "runs its one node as 2 UIDs, each declaring and "
                  "serving half of it", even=True, capacity=C, declared=(C / 2, C / 2)),
        _strategy("split above the cap", f"serves 2x the task's cap ({CAP:g}) as 2 UIDs; its "
                  "twin runs one UID, clamped at the cap", limit=True, capacity=2 * CAP,
                  declared=(CAP, CAP), twin=Setup("twin", 2 * CAP, (CAP,))),
        _strategy("varying 95-100%, declares 100%", "honest capacity varying 95-100% a period, "
                  "declared at 100%", vary=0.05),
        _strategy("varying 95-100%, declares 95%", "the same capacity declared at 95%",
                  declared=(0.95 * C,), vary=0.05),
        _strategy("0.2% failed requests", "honest, 0.2% of its requests fail", fail=0.002),
        _strategy("one outage window", "honest, serves nothing in one window", outage_windows=(5,)),
    ]
    return out


@dataclass(frozen=True)
class Verdict:
    strategy: Strategy
    ratio: float  # incentive after Yuma, strategy / twin
    vtrust: dict[str, float]  # mean per validator
    result: Result


def judge(strategy: Strategy, periods: int, seed: int = 0, pooled: bool = True,
          validators: dict[str, Validator] | None = None) -> Verdict:
    """Run the strategy beside its twin and the honest pool."""
    validators = validators or VALIDATORS
    result = simulate([*POOL, strategy.twin, strategy.setup], periods, validators=validators,
                      seed=seed, pooled=pooled)
    twin = result.reward["twin"]
    return Verdict(strategy, result.reward["strategy"] / twin if twin > 0 else float("nan"),
                   {v: float(np.mean(result.vtrust[v])) for v in validators}, result)


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    if not x.any() or not y.any():
        return float("nan")
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


# -- custom scenarios from YAML --

class MinerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    tasks: list[Literal[TASK_IDS]] = ["inpaint"]  # type: ignore[valid-type]
    capacity: Annotated[float, Field(gt=0)]
    declared: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)]
    priority: Literal["arrival", "stake"] = "arrival"
    rent: Annotated[float, Field(ge=0)] = 0.0
    rent_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    rent_late_slices: Annotated[int, Field(ge=0)] | None = None
    vary: Annotated[float, Field(ge=0, le=1)] = 0.0
    fail: Annotated[float, Field(ge=0, le=1)] = 0.0
    silent_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    quality: Annotated[float, Field(ge=0, le=1)] = 1.0


class ValidatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stake: Annotated[float, Field(gt=0)]
    organic: Annotated[float, Field(ge=0, le=1)] = 0.0


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    periods: Annotated[int, Field(ge=1)] = 200
    miners: Annotated[list[MinerSpec], Field(min_length=1)]
    validators: dict[str, ValidatorSpec] = {"validator": ValidatorSpec(stake=1.0)}


@dataclass(frozen=True)
class Scenario:
    name: str
    periods: int
    setups: list[Setup]
    validators: dict[str, Validator]


def load_scenario(path: str | Path) -> Scenario:
    """A scenario from YAML; ValueError with the file and the key on a bad one."""
    path = Path(path)
    try:
        spec = ScenarioFile.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: YAML syntax error: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    setups = []
    for m in spec.miners:
        setup = Setup(m.name, m.capacity, tuple(m.declared), tuple(m.tasks))
        setups.append(replace(
            setup, priority=m.priority, rent=m.rent, rent_share=m.rent_share,
            rent_late_slices=m.rent_late_slices, vary=m.vary, fail=m.fail,
            silent_share=m.silent_share, quality=m.quality,
            honest=(sum(m.declared) <= m.capacity and m.quality == 1 and m.fail == 0
                    and m.priority == "arrival" and not m.rent and not m.silent_share)))
    return Scenario(spec.name, spec.periods, setups,
                    {k: Validator(v.stake, v.organic) for k, v in spec.validators.items()})
