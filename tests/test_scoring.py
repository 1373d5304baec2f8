import math

import numpy as np
import pytest

from core.records import Outcome, RequestRecord, summarize
from core.scoring import (ContenderState, PeriodOutcome, advance, combine, effective, period_score,
                          quality, reliability, speed_factor, weights)
from core.tasks import TASKS


def test_period_score_formula():
    # 40% refused with half the budget unqueried: 0.6 x (1 - 0.4 x 0.5)
    assert period_score(100, 60, 40, 0, 200) == pytest.approx(0.6 * 0.8)
    # refusing once the budget is used up is forgiven
    assert period_score(200, 120, 80, 0, 200) == pytest.approx(0.6)
    assert period_score(0, 0, 0, 0, 100) == 0.0
    assert period_score(50, 50, 0, 0, 100) == 1.0


def test_speed_factor_is_smooth_and_bounded():
    assert speed_factor(1.0, 2.0) == 1.0 and speed_factor(4.0, 2.0) == 0.0
    xs = [speed_factor(s, 2.0) for s in np.linspace(2.0, 4.0, 50)]
    assert all(a >= b for a, b in zip(xs, xs[1:]))
    assert speed_factor(3.0, 2.0) == pytest.approx(0.5)


def test_summarize_counts_timeouts_and_invalid_with_server_errors():
    rs = [RequestRecord(1, "hk", "inpaint", False, o, 10, 0.1, q)
          for o, q in [(Outcome.OK, 1.0), (Outcome.OK, 0.5), (Outcome.RATE_LIMITED, None),
                       (Outcome.TIMEOUT, None), (Outcome.INVALID, None), (Outcome.SERVER_ERROR, None)]]
    o = summarize(rs, 100, 100, 0.6, False)
    assert (o.consumed, o.good, o.refused, o.failed) == (60, 20, 10, 30)
    assert o.quality_sum / o.quality_n == 0.75


def full(declared, f, audit, share=1.0, served=1.0):
    budget = declared * share
    good = f * budget * served
    return PeriodOutcome(declared, budget, f, audit, consumed=f * budget, good=good,
                         failed=f * budget - good, quality_sum=1.0, quality_n=1)


def test_no_credit_before_an_audit_then_demonstrated_caps_credit():
    s = advance(ContenderState(), full(1000, 0.05, False), 1.0)
    assert s.credited == 0 and effective(s) == 0
    s = advance(s, full(1000, 0.9, True, served=0.5), 1.0)
    assert s.demonstrated == pytest.approx(500) and s.credited == pytest.approx(500)


def test_demonstrated_scales_by_share():
    s = advance(ContenderState(), full(1000, 0.9, True, share=0.25), 0.25)
    assert s.demonstrated == pytest.approx(1000)


def test_over_claim_clawback_charges_and_repays_debt():
    s = advance(ContenderState(), full(1000, 0.9, True), 1.0)  # honest first audit
    for _ in range(5):  # then claims 3000 while able to serve 1000: small tests all pass
        s = advance(s, full(3000, 0.05, False), 1.0)
    assert s.credited == 1000  # capped by the audit
    s = advance(s, PeriodOutcome(3000, 3000, 0.9, True, consumed=2700, good=900, failed=1800,
                                 quality_sum=1, quality_n=1), 1.0)
    # D = 1000; paid min(3000, 1000) = 1000 over the 5 periods: no over-payment, no debt
    assert s.debt == 0 and s.credited == pytest.approx(1000)


def test_debt_is_repaid_before_earning():
    s = advance(ContenderState(), full(3000, 0.9, True), 1.0)  # passes one audit (rented GPUs)
    for _ in range(4):
        s = advance(s, full(3000, 0.05, False), 1.0)
    s = advance(s, full(3000, 0.9, True, served=1 / 3), 1.0)  # then serves a third
    # 2 x (4+1 periods x (3000 - 1000) x score 1), minus this period's 1000 repaid
    assert s.debt == pytest.approx(2 * 5 * 2000 - 1000)
    assert s.credited == 0 and effective(s) == 0


def test_reliability_is_consumed_weighted_and_quality_is_the_mean():
    window = (
        PeriodOutcome(100, 100, 0.1, False, consumed=10, good=10, quality_sum=0.9, quality_n=1),
        PeriodOutcome(100, 100, 0.9, True, consumed=90, good=45, failed=45, quality_sum=1.5,
                      quality_n=2),
    )
    s90 = period_score(90, 45, 0, 45, 100)
    assert reliability(window) == pytest.approx((10 * 1 + 90 * s90) / 100)
    assert quality(window) == pytest.approx(0.8)
    state = advance(advance(ContenderState(), window[0], 1.0), window[1], 1.0)
    assert state.reliability == reliability(window) and state.quality == quality(window)
    assert effective(state) == pytest.approx(state.credited * reliability(window) * 0.8 ** 3)


def test_window_keeps_the_last_k_periods():
    s = ContenderState()
    for _ in range(20):
        s = advance(s, full(100, 0.05, False), 1.0)
    assert len(s.window) == 16


def test_weights_follow_task_weights_and_redistribute_empty_tasks():
    w = weights({(0, "chat-llama-3"): 10.0, (1, "chat-llama-3"): 30.0, (1, "inpaint"): 5.0}, 3)
    live = TASKS["chat-llama-3"].weight + TASKS["inpaint"].weight
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(TASKS["chat-llama-3"].weight / live * 0.25)
    assert w[2] == 0
    assert (weights({}, 4) == 0).all()


def test_combine_ignores_nothing_finite():
    table = np.array([[1.0, 0.0], [3.0, 0.0]])
    assert combine(table, [0.5, 0.5]).tolist() == [0.25, 0.75]
    assert math.isclose(weights({(0, "inpaint"): float("nan"), (1, "inpaint"): 1.0}, 2)[1], 1.0)
