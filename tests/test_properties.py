"""SPEC §4's properties, checked with hypothesis on the real plan and scoring code
(``core.simulation`` models only how much each miner can serve)."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import plan
from core.budget import Contender
from core.scoring import weights
from core.simulation import Setup, simulate
from core.tasks import TASK_IDS, TASKS

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
capacity = st.floats(min_value=50, max_value=4000)


@FAST
@given(st.lists(capacity, min_size=2, max_size=5), st.integers(0, 10**6))
def test_reward_is_linear_in_served_capacity(caps, seed):
    setups = [Setup(f"m{i}", "inpaint", c, (c,)) for i, c in enumerate(caps)]
    reward = simulate(setups, 8, seed=seed).reward
    total = sum(reward.values())
    for s in setups:
        assert reward[s.name] / total == pytest.approx(s.capacity / sum(caps), rel=1e-6)


def over_claim_gain(k: float, seed: int, periods: int = 300) -> float:
    """Reward of a miner declaring k x its capacity, minus its reward declaring the truth."""
    def run(declared):
        setups = [Setup("honest", "inpaint", 1000, (1000,)), Setup("b", "inpaint", 1000, (declared,))]
        return simulate(setups, periods, seed=seed).reward["b"]
    return run(1000 * k) - run(1000)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(min_value=1.25, max_value=8), st.integers(0, 10**6))
def test_over_claiming_earns_less_than_the_truth_in_expectation(k, base):
    """SPEC §4 promises a loss in expectation over the audit draw: one seed's audits can all draw
    a low f (see the xfail below), so the mean over several block-hash sequences is asserted."""
    gains = [over_claim_gain(k, base + i, periods=200) for i in range(6)]
    assert np.mean(gains) < 0


@pytest.mark.xfail(strict=True, reason=(
    "SPEC gap: an audit asks for f ~ U(0.8, 1.0) of the declaration, and demonstrated = good / "
    "(f x share). A miner that serves all it is asked (f x k <= 1) shows its whole declaration; "
    "one asked for more than its capacity C serves C and is credited C / f, up to 1.25 C. Over-"
    "claims below ~1.25x therefore gain in expectation (k = 1.1: +3%; k = 1.15: +0.8%), and "
    "larger ones can gain on an unlucky run of low-f audits (k = 1.5, seed 10534: +0.2%). "
    "Full-budget audits close it (test_full_budget_audits_make_every_over_claim_lose)."))
@pytest.mark.parametrize("k", [1.05, 1.1])
def test_small_over_claims_under_spec_audits(k):
    assert over_claim_gain(k, seed=1, periods=400) < 0


@pytest.mark.parametrize("k", [1.01, 1.05, 1.1, 1.5, 3.0])
def test_full_budget_audits_make_every_over_claim_lose(k, monkeypatch):
    monkeypatch.setattr(plan, "AUDIT_F", (1.0, 1.0))
    assert over_claim_gain(k, seed=1, periods=400) < 0


@FAST
@given(capacity, st.integers(2, 6), st.integers(0, 10**6))
def test_splitting_over_uids_earns_no_more(c, n, seed):
    one = simulate([Setup("one", "inpaint", c, (c,)), Setup("other", "inpaint", 1000, (1000,))],
                   40, seed=seed).reward["one"]
    split = simulate([Setup("split", "inpaint", c, (c / n,) * n),
                      Setup("other", "inpaint", 1000, (1000,))], 40, seed=seed).reward["split"]
    assert split <= one * (1 + 1e-9)


@SLOW
@given(capacity, st.integers(2, 4), st.integers(0, 10**6))
def test_time_sharing_one_gpu_over_uids_loses(c, n, seed):
    """n UIDs on one GPU, each declaring the whole GPU: the first audit that tests them together
    (a network-wide one, or a new validator's first) catches and claws back."""
    other = Setup("other", "inpaint", 1000, (1000,))
    honest = simulate([Setup("x", "inpaint", c, (c,)), other], 200, seed=seed).reward["x"]
    shared = simulate([Setup("x", "inpaint", c, (c,) * n), other], 200, seed=seed).reward["x"]
    assert shared < honest


@FAST
@given(st.floats(0.05, 0.95), st.integers(0, 10**6))
def test_validators_with_different_stakes_agree(stake, seed):
    setups = [Setup("a", "inpaint", 700, (700,)), Setup("b", "chat-llama-3", 9000, (9000,)),
              Setup("c", "inpaint", 300, (350,))]
    result = simulate(setups, 16, stakes={"small": stake, "big": 1 - stake}, seed=seed)
    for x, y in zip(result.vectors["small"], result.vectors["big"]):
        if x.sum() and y.sum():
            assert float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) > 0.99


@FAST
@given(st.text(min_size=1, max_size=66), st.sampled_from(TASK_IDS), st.integers(1, 10**9))
def test_two_validators_draw_the_same_fractions_and_audits(block_hash, task, reg):
    cs = [Contender(1, "hk", task, 1000.0, 1000.0 * share, reg) for share in (0.1, 0.9)]
    a, b = (plan.targets([c], block_hash, 10**9, 300, {("hk", task)})[0] for c in cs)
    assert (a.f, a.audit, a.reason) == (b.f, b.audit, b.reason)


@FAST
@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from(TASK_IDS),
                          st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                    st.floats(0, 1e12))), max_size=40))
def test_weights_are_finite_non_negative_and_sum_to_one(entries):
    w = weights({(uid, task): value for uid, task, value in entries}, 10)
    assert np.isfinite(w).all() and (w >= 0).all()
    scored = any(math.isfinite(v) and v > 0 for _, _, v in entries)
    assert w.sum() == pytest.approx(1.0 if scored else 0.0)


@FAST
@given(st.lists(st.tuples(st.sampled_from(TASK_IDS), st.floats(1, 1e6)), min_size=1, max_size=12))
def test_task_shares_follow_task_weights_and_empty_tasks_redistribute(entries):
    w = weights({(uid, task): v for uid, (task, v) in enumerate(entries)}, len(entries))
    live = {task for task, _ in entries}
    total_w = sum(TASKS[t].weight for t in live)
    for task in live:
        got = sum(w[uid] for uid, (t, _) in enumerate(entries) if t == task)
        assert got == pytest.approx(TASKS[task].weight / total_w)
