"""A validator's report of one audit window (docs/protocol.md §9), as it travels between
validators: per contender and per slice, the units it asked and how they ended, and the
declarations the miners signed for the window's period and gave this validator (§2), so every
validator can compare what each of them was told.

Every figure in a report is a peer's claim, so the model bounds each one (finite, non-negative,
outcomes within what was asked, a bounded number of rows and slices) before any of it is pooled;
pooling then weighs each report at most its validator's stake share of the window
(``core.pooling.report_cap``) and ignores the top 30% of the weight, so a report can move a
contender only about as far as its validator's stake allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.declaration import SignedDeclaration
from core.plan import SLICES
from core.protocol import PROTOCOL_VERSION
from core.scoring import Tally, WindowOutcome

REPORT_PATH = "/window-report"
SIGNED_METHOD = "REPORT"  # what the serving validator signs its answer as (btauth/1 headers)
MAX_ROWS = 8192  # contenders in one report: 256 uids x every task, with room
MAX_UNITS = 1e12  # per slice: far above any declaration's window
MAX_DECLARATIONS = 1024  # one per miner: 256 uids, with room
MAX_REPORT_BYTES = 4 * 2**20  # a full report of MAX_ROWS rows is ~3 MiB of JSON, 256 miners'
#                               declarations of every task ~0.2 MiB

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
    # what the validator asked of it outside windows since the window before this one
    outside: SliceReport | None = None


class ReportRequest(BaseModel):
    """What a validator asks another for: its report of the window opened at ``block``."""

    version: str = PROTOCOL_VERSION
    block: Annotated[int, Field(ge=0, lt=2**63)]  # a database integer


class WindowReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = PROTOCOL_VERSION
    netuid: int
    validator: Annotated[str, Field(min_length=1, max_length=64)]  # its hotkey
    block: Annotated[int, Field(ge=0, lt=2**63)]  # the window's opening block
    rows: Annotated[list[ContenderReport], Field(max_length=MAX_ROWS)]
    # every declaration a miner gave this validator for the window's period, one per miner
    declarations: Annotated[list[SignedDeclaration], Field(max_length=MAX_DECLARATIONS)] = []

    @model_validator(mode="after")
    def _one_declaration_per_miner(self) -> WindowReport:
        if len({d.hotkey for d in self.declarations}) != len(self.declarations):
            raise ValueError("a miner's declaration is carried twice")
        return self

    def declared_by(self) -> set[str]:
        """The miners that gave this validator a declaration for the period: the others were
        silent to it (or answered what does not count)."""
        return {d.hotkey for d in self.declarations}

    def outside(self) -> dict[tuple[str, str], Tally]:
        """Each contender's requests outside windows since the window before, as the reporting
        validator measured them (a repeated row: the first counts)."""
        out: dict[tuple[str, str], Tally] = {}
        for row in self.rows:
            if row.outside is not None:
                out.setdefault((row.hotkey, row.task), row.outside.tally())
        return out

    def outcomes(self) -> dict[tuple[str, str], WindowOutcome]:
        """Each contender's window as the reporting validator measured it (a repeated row: the
        first counts)."""
        out: dict[tuple[str, str], WindowOutcome] = {}
        for row in self.rows:
            out.setdefault((row.hotkey, row.task), WindowOutcome(
                self.block, tuple(s.tally() for s in row.slices)))
        return out


def _slice(t: Tally) -> SliceReport:
    return SliceReport(asked=t.asked, good=t.good, refused=t.refused, failed=t.failed,
                       requests=t.requests)


def report_of(netuid: int, validator: str, block: int,
              outcomes: Mapping[tuple[str, str], WindowOutcome],
              declarations: Iterable[SignedDeclaration] = (),
              outside: Mapping[tuple[str, str], Tally] | None = None) -> WindowReport:
    """A validator's own window as a report: every contender it sent requests in the window or
    outside windows since the window before (``outside``), and every declaration the miners gave
    it for the period."""
    outside = outside or {}
    keys = {k for k, w in outcomes.items() if w.tally.asked > 0}
    keys |= {k for k, t in outside.items() if t.asked > 0}
    empty = (Tally(),) * SLICES
    rows = [ContenderReport(
        hotkey=hotkey, task=task,
        slices=[_slice(t) for t in (outcomes[(hotkey, task)].slices
                                    if (hotkey, task) in outcomes else empty)],
        outside=_slice(outside[(hotkey, task)]) if (hotkey, task) in outside else None)
        for hotkey, task in sorted(keys)]
    return WindowReport(netuid=netuid, validator=validator, block=block, rows=rows,
                        declarations=sorted(declarations, key=lambda d: d.hotkey))
