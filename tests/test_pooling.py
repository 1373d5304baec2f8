"""The pooling rule's bounds (docs/protocol.md §9), each against the report that would break it:
a liar's lone request, a miner silent towards one validator, capacity that arrives late."""

from __future__ import annotations

import pytest

from core.budget import Contender
from core.plan import SLICES
from core.pooling import level, most_lowered, pool_window, report_cap
from core.scoring import Tally, WindowOutcome

PB = 60
STAKES = {"v40": 40.0, "v30": 30.0, "v25": 25.0, "v05": 5.0}
TOTAL = sum(STAKES.values())
C = Contender(1, "miner", "chat-llama-3", 24000.0, 24000.0 * 0.4, 0)
KEY = (C.hotkey, C.task)


def share_of(v: str) -> Tally:
    """One slice of validator ``v``'s share of the window's full rate, in 4 requests."""
    units = report_cap(C, STAKES[v] / TOTAL, PB).slice
    return Tally(units, units, 0.0, 0.0, 4)


def served(reports: dict[str, list[Tally]]) -> float:
    outcomes = {v: {KEY: WindowOutcome(30, tuple(s))} for v, s in reports.items()}
    pooled, _ = pool_window(30, outcomes, [C], STAKES, PB)
    return pooled[KEY].served


def honest(fraction: float = 1.0) -> dict[str, list[Tally]]:
    def at(t: Tally) -> Tally:
        return Tally(t.asked, t.asked * fraction, 0.0, t.asked * (1 - fraction), t.requests)

    return {v: [at(share_of(v))] * SLICES for v in STAKES}


@pytest.mark.parametrize("fractions,weights", [([0.5] * 3, [1, 2, 3]), ([0.0, 1.0], [1, 1]),
                                                ([0.2, 0.9, 1.0], [3, 1, 1])])
def test_the_level_of_agreeing_reports_is_their_fraction_and_never_above_the_mean(fractions,
                                                                                  weights):
    mean = sum(f * w for f, w in zip(fractions, weights)) / sum(weights)
    assert level(fractions, weights) <= mean + 1e-12
    assert level([fractions[0]] * len(weights), weights) == pytest.approx(fractions[0])


def test_a_small_liars_lone_failed_request_moves_a_minute_about_as_far_as_its_stake():
    reports = honest()
    for v in ("v40", "v30"):  # their requests happened to miss the first minute
        first, *rest = reports[v]
        reports[v] = [Tally(), *(Tally(t.asked * 1.25, t.good * 1.25, 0.0, 0.0, 5)
                                 for t in rest)]
    # v05 claims one huge request in the first slice, failed, and none elsewhere: capped at its
    # share of the minute, which the requests of v40 and v30 would have filled at the level
    reports["v05"] = [Tally(1e6, 0.0, 0.0, 1e6, 1)] + [Tally()] * (SLICES - 1)
    lowered = most_lowered(STAKES["v05"] / TOTAL)
    assert 1 - 2 * lowered <= served(reports) < 1 - lowered


def test_capacity_that_arrives_after_the_first_minute_is_credited_its_first_minute():
    reports = honest()
    for v, slices in reports.items():  # every validator saw a third served in the first slice
        first = slices[0]
        reports[v] = [Tally(first.asked, first.asked / 3, 0.0, 2 * first.asked / 3,
                            first.requests), *slices[1:]]
    assert served(reports) == pytest.approx(1 / 3)


def test_a_miner_silent_towards_one_validator_counts_its_share_as_refused():
    reports = honest()
    reports_without = {v: {KEY: WindowOutcome(30, tuple(s))} for v, s in reports.items()
                       if v != "v30"}
    reports_without["v30"] = {}  # v30's report has no row: it got no answer
    pooled, _ = pool_window(30, reports_without, [C], STAKES, PB)
    assert pooled[KEY].served == pytest.approx(1 - most_lowered(STAKES["v30"] / TOTAL))
    assert served(honest()) == pytest.approx(1.0)


def test_a_contender_declaring_nothing_is_not_scored_by_missing_rows():
    idle = Contender(2, "idle", "chat-llama-3", 0.0, 0.0, 0)
    outcomes = {v: {KEY: WindowOutcome(30, tuple(s))} for v, s in honest().items()}
    pooled, _ = pool_window(30, outcomes, [C, idle], STAKES, PB)
    assert (idle.hotkey, idle.task) not in pooled and pooled[KEY].served == pytest.approx(1.0)


def test_requests_outside_windows_are_pooled_so_every_validator_agrees():
    from core.pooling import pool_outside

    # each asked in proportion to its stake; the miner served only v40
    served_first = {v: Tally(2 * x, 2 * x if v == "v40" else 0.0, 0.0,
                             0.0 if v == "v40" else 2 * x, 5) for v, x in STAKES.items()}
    pooled = pool_outside(served_first, STAKES, C.declared)
    # served 40% of the stake outside windows: the mean of the lowest 70% of it
    assert pooled.fraction == pytest.approx(0.1 / 0.7)
    # a liar claiming a billion units asked weighs its stake and adds its share of the budget
    lied = {**served_first, "v05": Tally(1e9, 0.0, 0.0, 1e9, 1)}
    assert pool_outside(lied, STAKES, C.declared).asked <= C.declared
    assert pool_outside({"v05": served_first["v05"]}, STAKES, C.declared) is None  # 5% of stake


def test_one_small_report_of_failures_outside_windows_is_no_evidence():
    from core.pooling import pool_outside

    quiet = {v: Tally() for v in STAKES if v != "v05"}  # the others asked nothing outside
    assert pool_outside({**quiet, "v05": Tally(10.0, 0.0, 0.0, 10.0, 1)}, STAKES, C.declared) \
        is None  # each validator keeps its own view, where the miner failed nothing


def test_a_report_carrying_the_declaration_without_a_row_still_counts_for_coverage():
    outcomes = {v: {KEY: WindowOutcome(30, tuple(s))} for v, s in honest().items()}
    outcomes["v40"] = {}  # it answered v40 (its declaration is carried) and v40 scored nothing
    answered = {v: {C.hotkey} for v in STAKES}
    pooled, pooling = pool_window(30, outcomes, [C], STAKES, PB, answered)
    assert pooled[KEY].pooled and pooled[KEY].served == pytest.approx(1.0)
    assert pooling.coverage == 1.0
