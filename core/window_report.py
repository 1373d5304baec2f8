"""A validator's report of one audit window (docs/protocol.md §9), as it travels between
validators: per contender and per slice, the units it asked and how they ended.

Every figure in a report is a peer's claim, so the model bounds each one (finite, non-negative,
outcomes within what was asked, a bounded number of rows and slices) before any of it is pooled;
pooling then caps each report's ``asked`` at its validator's share of the window
(``core.pooling.report_cap``) and takes the window's fraction as a stake-weighted median, so a
report can move a contender only as far as its validator's stake allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.plan import SLICES
from core.protocol import PROTOCOL_VERSION
from core.scoring import Tally, WindowOutcome

REPORT_PATH = "/window-report"
SIGNED_METHOD = "REPORT"  # what the serving validator signs its answer as (btauth/1 headers)
MAX_ROWS = 8192  # contenders in one report: 256 uids x every task, with room
MAX_UNITS = 1e12  # per slice: far above any declaration's window
MAX_REPORT_BYTES = 4 * 2**20  # a full report of MAX_ROWS rows is ~3 MiB of JSON

Units = Annotated[float, Field(ge=0, le=MAX_UNITS, allow_inf_nan=False)]


def signed_path(block: int) -> str:
    """The path a report's signature covers: the window it is of, so it answers nothing else."""
    return f"{REPORT_PATH}/{block}"


class SliceReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    asked: Units
    good: Units
    refused: Units
    failed: Units
    requests: Annotated[int, Field(ge=0, le=10**6)]

    @model_validator(mode="after")
    def _outcomes_within_asked(self) -> SliceReport:
        if self.good + self.refused + self.failed > self.asked * (1 + 1e-9) + 1e-6:
            raise ValueError("good + refused + failed exceeds asked")
        return self

    def tally(self) -> Tally:
        return Tally(self.asked, self.good, self.refused, self.failed, self.requests)


class ContenderReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hotkey: Annotated[str, Field(min_length=1, max_length=64)]
    task: Annotated[str, Field(min_length=1, max_length=64)]
    slices: Annotated[list[SliceReport], Field(min_length=SLICES, max_length=SLICES)]


class ReportRequest(BaseModel):
    """What a validator asks another for: its report of the window opened at ``block``."""

    version: str = PROTOCOL_VERSION
    block: Annotated[int, Field(ge=0)]


class WindowReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = PROTOCOL_VERSION
    netuid: int
    validator: Annotated[str, Field(min_length=1, max_length=64)]  # its hotkey
    block: Annotated[int, Field(ge=0)]  # the window's opening block
    rows: Annotated[list[ContenderReport], Field(max_length=MAX_ROWS)]

    def outcomes(self) -> dict[tuple[str, str], WindowOutcome]:
        """Each contender's window as the reporting validator measured it (a repeated row: the
        first counts)."""
        out: dict[tuple[str, str], WindowOutcome] = {}
        for row in self.rows:
            out.setdefault((row.hotkey, row.task), WindowOutcome(
                self.block, tuple(s.tally() for s in row.slices)))
        return out


def report_of(netuid: int, validator: str, block: int,
              outcomes: Mapping[tuple[str, str], WindowOutcome]) -> WindowReport:
    """A validator's own window as a report: every contender it sent requests in the window."""
    rows = [ContenderReport(hotkey=hotkey, task=task, slices=[
        SliceReport(asked=t.asked, good=t.good, refused=t.refused, failed=t.failed,
                    requests=t.requests) for t in w.slices])
        for (hotkey, task), w in sorted(outcomes.items()) if w.tally.asked > 0]
    return WindowReport(netuid=netuid, validator=validator, block=block, rows=rows)
