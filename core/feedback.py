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


# What each way a request can end means for the miner (``core.records.Outcome``'s values)
OUTCOME_REASONS = {
    "ok": "answered",
    "429": "refused with 429 (a validator's stake share of the declaration used up, or the "
           "concurrency group's queue full): counts as not served",
    "5xx": "a server error or a refused connection: counts as failed",
    "timeout": "answered after the task's expected time, or still running when the validator "
               "stopped waiting past that time: counts as failed",
    "invalid": "an answer that broke the protocol (wrong shape, units or stream): counts as "
               "failed",
    "401/403": "the miner refused the validator's signature or permit: counts as failed",
    "abandoned": "the validator stopped waiting (its period ended, its client left) while the "
                 "request was still within its expected time: not scored",
    "late": "not sent: a slice after its window slice ended it still waited for a slot (your "
            "earlier answers at this validator were still running past what your declared rate "
            "needs): counts as failed",
}


def outcome_reason(outcome: str) -> str:
    return OUTCOME_REASONS.get(outcome, "")


class TaskFeedback(BaseModel):
    """One contender (the miner's task) after the validator's last closed (scored) period:
    ``outcomes``, ``scored_zero`` and ``notes`` are of that period's requests; ``running`` how
    the requests of the period still running have ended so far (not scored yet)."""

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
    scored_zero: int  # answers of the scored period scored 0: a failed check, or twice too slow
    notes: Annotated[list[Annotated[str, Field(max_length=300)]], Field(max_length=8)]
    running: Annotated[dict[Annotated[str, Field(max_length=32)], int],
                       Field(max_length=16)] = {}


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[str, Field(max_length=32)] = PROTOCOL_VERSION
    validator: Annotated[str, Field(max_length=64)]
    hotkey: Annotated[str, Field(max_length=64)]
    period: int | None  # the last period this validator scored (closed): what the tasks show
    running: int | None = None  # the period it is in now, not scored yet (None: none open)
    tasks: Annotated[list[TaskFeedback], Field(max_length=32)]
