import math

import numpy as np
import pytest

from core.plan import Window
from core.records import Outcome, RequestRecord, summarize
from core.scoring import (
    ContenderState,
    PeriodOutcome,
    Tally,
    WindowOutcome,
    advance,
    combine,
    effective,
    speed_factor,
    weights,
)
from core.tasks import TASKS


def window(fractions, requests=4, asked=100.0, block=0):
    return WindowOutcome(block, tuple(Tally(asked, asked * f, asked * (1 - f), 0.0, requests)
                                      for f in fractions))


def period(declared, *windows, other=Tally(), q=(0.0, 0)):
    return PeriodOutcome(declared, tuple(windows), other, *q)


def test_speed_factor_is_smooth_and_bounded():
    assert speed_factor(1.0, 2.0) == 1.0 and speed_factor(4.0, 2.0) == 0.0
    xs = [speed_factor(s, 2.0) for s in np.linspace(2.0, 4.0, 50)]
    assert all(a >= b for a, b in zip(xs, xs[1:]))
    assert speed_factor(3.0, 2.0) == pytest.approx(0.5)


def test_window_score_is_the_square_and_served_the_worst_slice():
    w = window([1.0, 1.0, 0.5, 1.0, 1.0])
    assert w.score == pytest.approx(0.9 ** 2)
    assert w.served == 0.5  # capacity that arrived late earns the worst slice
    few = window([0.5, 1.0, 1.0, 1.0, 1.0], requests=1)
    assert few.served == 0.5  # its own view judges every slice, however few its requests
    holes = WindowOutcome(0, (Tally(),) + window([0.8] * 4).slices)
    assert holes.served == pytest.approx(0.8)  # a slice without requests is not judged


def test_a_pooled_window_is_served_and_scored_as_the_reports_agree():
    pooled = WindowOutcome(0, window([0.0] * 5).slices, pooled=True, pooled_served=0.9,
                           pooled_score=0.7)
    assert pooled.served == 0.9 and pooled.score == 0.7


def test_summarize_places_records_in_slices_and_counts_failures_alike():
    w = Window(7, 1000.0, 50.0)

    def rec(outcome, at, q=None):
        return RequestRecord(1, "hk", "inpaint", False, outcome, 10, 0.1, q, at)

    rs = [rec(Outcome.OK, 1001, 1.0), rec(Outcome.TIMEOUT, 1001), rec(Outcome.OK, 1045, 0.5),
          rec(Outcome.RATE_LIMITED, 1045), rec(Outcome.INVALID, 1045), rec(Outcome.OK, 500),
          rec(Outcome.SERVER_ERROR, 2000), rec(Outcome.ABANDONED, 1020)]
    o = summarize(rs, 100, [w])
    (win,) = o.windows
    assert win.slices[0] == Tally(20, 10, 0, 10, 2) and win.slices[4] == Tally(30, 10, 10, 10, 3)
    assert win.slices[2] == Tally()  # abandoned: not the miner's doing, not scored
    assert o.other == Tally(20, 10, 0, 10, 2)
    assert o.quality_sum / o.quality_n == 0.75


def test_demonstrated_is_the_mean_of_the_last_windows_and_credit_never_exceeds_it():
    s = advance(ContenderState(), period(1000), 0)
    assert s.credited == 0 and effective(s) == 0  # no window yet: nothing demonstrated
    for f in (1.0, 1.0, 0.0, 1.0, 1.0):
        s = advance(s, period(1000, window([f] * 5)), 0)
    assert s.demonstrated == 800 and s.credited == 800  # an outage window counts, spread thin
    s = advance(s, period(3000, window([1 / 3] * 5)), 0)  # declares 3x what it serves
    assert s.credited == pytest.approx(5000 / 6) and s.reliability < 1
    for _ in range(20):  # the last 16 windows only
        s = advance(s, period(1000, window([1.0] * 5)), 0)
    assert s.demonstrated == 1000 and len(s.demonstrated_w) == 16


def test_over_claiming_pays_less_than_the_truth():
    truth = overclaim = ContenderState()
    for _ in range(20):
        truth = advance(truth, period(1000, window([1.0] * 5), other=Tally(10, 10, requests=1)), 0)
        overclaim = advance(overclaim, period(2000, window([0.5] * 5, asked=200),
                                              other=Tally(20, 20, requests=1)), 0)
    assert effective(overclaim) < 0.4 * effective(truth)


def test_quality_is_one_until_the_first_check_and_a_new_registration_starts_afresh():
    s = advance(ContenderState(), period(1000, window([1.0] * 5)), 5)
    assert s.quality == 1.0 and s.credited == 1000
    s = advance(s, period(1000, q=(1.6, 2)), 5)
    assert s.quality == pytest.approx(0.8)
    assert effective(s) == pytest.approx(1000 * 1.0 * 0.8 ** 3)
    fresh = advance(s, period(1000), 6)  # the hotkey registered again at another block
    assert fresh.demonstrated == 0 and fresh.quality == 1.0 and fresh.scored == ()


def test_a_period_without_a_window_keeps_the_last_score_and_the_last_k_windows():
    s = ContenderState()
    for _ in range(20):
        s = advance(s, period(100, window([0.9] * 5)), 0)
    assert len(s.demonstrated_w) == 16 and len(s.scored) == 16
    kept = advance(s, period(100, other=Tally(5, 5, requests=1)), 0)
    assert kept.period_score == s.period_score and kept.demonstrated == s.demonstrated


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
