"""The two spending rules named in ``core.spending``, and the store applying them as they say on
SQLite and PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import itertools

from core.budget import Contender
from core.records import Outcome, RequestRecord
from core.spending import admits, landing
from tests.records import finish


def test_a_request_fits_in_what_is_left_and_a_planned_one_only_under_its_cap():
    assert admits(100, 90, 10) and not admits(100, 91, 10)
    assert admits(100, 40, 10, cap=50) and not admits(100, 50, 10, cap=50)
    assert not admits(100, 95, 10, cap=200)  # a cap never lifts the budget


def test_a_late_record_lands_in_the_first_period_not_sealed_after_its_own():
    assert landing(5, {5: False, 6: False}) == 5
    assert landing(5, {}) == 5  # a period not begun here is not sealed
    assert landing(5, {5: True, 6: True, 7: False, 8: False}) == 7
    assert landing(5, {5: True, 6: True}) == 7  # none open yet: the one after the last sealed


def test_the_store_reserves_exactly_what_the_rule_admits(store):
    budget = 100.0
    cases = list(itertools.product((0.0, 40.0, 50.0, 90.0, 95.0), (5.0, 10.0),
                                   (None, 50.0, 200.0)))
    store.begin_period(1, 0, "0x", 1.0, 0.0, [Contender(i, f"hk{i}", "inpaint", budget, budget,
                                                        0) for i in range(len(cases))])
    for i, (used, _, _) in enumerate(cases):
        store.settle(1, f"hk{i}", "inpaint", used)
    for i, (used, units, cap) in enumerate(cases):
        held = store.reserve(1, f"hk{i}", "inpaint", units, cap)
        assert (held is not None) == admits(budget, used, units, cap), (used, units, cap)


def test_the_store_lands_late_records_where_the_rule_says(store):
    hk = Contender(1, "hk", "inpaint", 100.0, 100.0, 0)
    sealed: dict[int, bool] = {}
    for period in (3, 4, 5):
        store.begin_period(period, period * 10, "0x", 1.0, 0.0, [hk])
        sealed[period] = False
    for seal in (3, 4, 5):
        store.seal(seal)
        sealed[seal] = True
        for period in (3, 4, 5):
            r = RequestRecord(period, "hk", "inpaint", False, Outcome.OK, 1.0, 0.1)
            assert finish(store, r, 1.0)[1] == landing(period, sealed), (seal, period)
