"""What a validator measured of one miner, as the miner reads it (docs/protocol.md §9): a
miner signs its request with its own hotkey and is answered its own contenders only.

The answer is bounded like every message (a row per task, the last K windows each), so a miner
reading many validators' answers reads a bounded amount."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from core.protocol import PROTOCOL_VERSION
from core.scoring import K

FEEDBACK_PATH = "/feedback"
MAX_FEEDBACK_BYTES = 256 * 1024
FEEDBACK_INTERVAL_S = 10.0  # a miner asks one validator at most this often (429 sooner)

Figure = Annotated[float, Field(allow_inf_nan=False)]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[str, Field(max_length=32)] = PROTOCOL_VERSION


class WindowFeedback(BaseModel):
    """One audit window as this validator scored it: units it asked, and the score (the worst
    slice's served share, squared)."""

    asked: Figure
    score: Figure


class TaskFeedback(BaseModel):
    """One contender (the miner's task) after the validator's last closed period."""

    model_config = ConfigDict(extra="forbid")
    task: Annotated[str, Field(max_length=64)]
    declared: Figure
    demonstrated: Figure  # the mean of the last windows' declared x served
    credited: Figure  # min(declared, demonstrated)
    reliability: Figure
    quality: Figure
    effective: Figure  # credited x reliability x quality^3: what its weight is in proportion to
    windows: Annotated[list[WindowFeedback], Field(max_length=K)]
    outcomes: Annotated[dict[Annotated[str, Field(max_length=32)], int], Field(max_length=16)]
    scored_zero: int  # answers of the last period scored 0: a failed check, or twice too slow
    notes: Annotated[list[Annotated[str, Field(max_length=300)]], Field(max_length=8)]


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[str, Field(max_length=32)] = PROTOCOL_VERSION
    validator: Annotated[str, Field(max_length=64)]
    hotkey: Annotated[str, Field(max_length=64)]
    period: int | None  # the latest period this validator began (its records so far)
    tasks: Annotated[list[TaskFeedback], Field(max_length=32)]
