"""Named simulator scenarios, and custom ones from YAML (validated with the errors operators
expect). Each scenario pits a behaviour against an honest miner of the same real capacity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.simulation import Setup, Validator
from core.tasks import TASK_IDS

SYNTHETIC_AND_ORGANIC = {"synthetic-only": Validator(0.5), "organic-heavy": Validator(0.3, 0.6),
                         "small": Validator(0.2)}


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: str
    about: str
    setups: list[Setup]
    validators: dict[str, Validator]
    periods: int = 400


def _honest(name: str, capacity: float, task: str = "inpaint") -> Setup:
    return Setup(name, task, capacity, (capacity,))


def _scenarios() -> dict[str, Scenario]:
    one = {"validator": Validator(1.0)}
    base = [_honest("honest-1000", 1000)]
    deviants = {
        "over-claimer": Setup("over-claimer", "inpaint", 1000, (2000,), honest=False),
        "sybil": Setup("sybil", "inpaint", 1000, (250,) * 4),
        "time-sharer": Setup("time-sharer", "inpaint", 1000, (1000,) * 4, registered=(0, 0, 0, 0),
                             honest=False),
        "time-sharer-staggered": Setup("time-sharer-staggered", "inpaint", 1000, (1000,) * 4,
                                       registered=(0, 30, 60, 90), honest=False),
        "slow": Setup("slow", "inpaint", 1000, (1000,), slowness=1.3, honest=False),
        "early-refuser": Setup("early-refuser", "inpaint", 1000, (1000,), refuse=0.3, honest=False),
        "cheater": Setup("cheater", "inpaint", 1000, (1000,), quality=0.0, honest=False),
        "stake-first": Setup("stake-first", "inpaint", 1000, (2000,), priority="stake",
                             honest=False),
    }
    out = {
        "honest": Scenario(
            name="honest", about="honest miners of different sizes: reward follows capacity",
            setups=[_honest(f"honest-{c}", c) for c in (250, 500, 1000, 2000, 4000)],
            validators=one, periods=100),
        "validators": Scenario(
            name="validators",
            about="a synthetic-only and an organic-heavy validator score the same miners",
            setups=[_honest(f"honest-{c}", c) for c in (500, 1000, 2000)]
            + [_honest("chat-200k", 200_000, "chat-llama-3"), deviants["slow"]],
            validators=SYNTHETIC_AND_ORGANIC, periods=100),
    }
    about = {
        "over-claimer": "declares 2x what it can serve",
        "sybil": "splits one setup over 4 UIDs",
        "time-sharer": "runs 4 UIDs on one GPU, each declaring the whole GPU (registered at once)",
        "time-sharer-staggered": "the same, its UIDs registered one at a time (30 periods apart)",
        "slow": "serves everything at 1.3x the expected time",
        "early-refuser": "refuses 30% of requests however early in the period",
        "cheater": "fails the validators' checks (wrong model, fake output)",
        "stake-first": "declares 2x; in audits serves the most-staked validators first "
                       "(SPEC §4's known limit)",
    }
    for name, setup in deviants.items():
        validators = SYNTHETIC_AND_ORGANIC if name == "stake-first" else one
        out[name] = Scenario(name=name, about=about[name], setups=base + [setup],
                             validators=validators)
    out["default"] = Scenario(
        name="default", about="every behaviour at once, three validators",
        setups=[_honest(f"honest-{c}", c) for c in (500, 1000, 2000)] + list(deviants.values()),
        validators=SYNTHETIC_AND_ORGANIC, periods=400)
    return out


SCENARIOS = _scenarios()


class MinerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    task: Literal[TASK_IDS] = "inpaint"  # type: ignore[valid-type]
    capacity: Annotated[float, Field(gt=0)]
    declared: list[Annotated[float, Field(ge=0)]]
    registered: list[Annotated[int, Field(ge=0)]] = []
    priority: Literal["proportional", "stake"] = "proportional"
    slowness: Annotated[float, Field(gt=0)] = 1.0
    refuse: Annotated[float, Field(ge=0, le=1)] = 0.0
    quality: Annotated[float, Field(ge=0, le=1)] = 1.0

    @field_validator("registered")
    @classmethod
    def _one_per_uid(cls, v, info):
        declared = info.data.get("declared") or []
        if v and len(v) != len(declared):
            raise ValueError(f"give one registration period per declared UID ({len(declared)})")
        return v


class ValidatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stake: Annotated[float, Field(gt=0)]
    organic: Annotated[float, Field(ge=0, le=1)] = 0.0


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    about: str = "a custom scenario"
    periods: Annotated[int, Field(ge=1)] = 200
    miners: Annotated[list[MinerSpec], Field(min_length=1)]
    validators: dict[str, ValidatorSpec] = {"validator": ValidatorSpec(stake=1.0)}


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
    setups = [Setup(m.name, m.task, m.capacity, tuple(m.declared), tuple(m.registered), m.priority,
                    m.slowness, m.refuse, m.quality,
                    honest=(sum(m.declared) == m.capacity and m.refuse == 0 and m.quality == 1
                            and m.slowness <= 1 and m.priority == "proportional"))
              for m in spec.miners]
    return Scenario(name=spec.name, about=spec.about, setups=setups, periods=spec.periods,
                    validators={k: Validator(v.stake, v.organic) for k, v in spec.validators.items()})

