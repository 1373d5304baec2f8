import random

import numpy as np

from core import plan
from core.budget import Contender, contenders, stake_share
from core.chain import Metagraph, Neuron


def neuron(uid, stake=0.0, permit=False, registered_at=0):
    return Neuron(uid, f"hk{uid}", f"ck{uid}", stake, permit, "http://x", registered_at)


def test_stake_share_and_budgets():
    graph = Metagraph(100, (neuron(0, 300, True), neuron(1, 100, True), neuron(2, 1e6), neuron(3)))
    assert stake_share(graph, "hk0") == 0.75
    assert stake_share(graph, "hk2") == 0.0  # stake without a permit is no share
    cs = contenders(graph, {"hk3": {"inpaint": 400.0}}, 0.75)
    assert cs == [Contender(3, "hk3", "inpaint", 400.0, 300.0, 0)]


def test_draws_depend_on_the_block_hash_alone():
    hashes = [f"0x{i:064x}" for i in range(4000)]
    audits = [plan.is_audit_period(h) for h in hashes]
    assert 0.03 < np.mean(audits) < 0.07
    assert audits == [plan.is_audit_period(h) for h in hashes]
    young = np.mean([plan.is_young_audit_period(h) for h in hashes])
    assert 0.22 < young < 0.28


def test_test_fraction_distribution():
    fs = np.array([plan.test_fraction(f"0x{i}", "hk", "inpaint", False) for i in range(4000)])
    assert ((fs >= 0.05) & (fs <= 0.10)).all()
    assert 0.65 < np.mean(fs == 0.05) < 0.75
    audit = np.array([plan.test_fraction(f"0x{i}", "hk", "inpaint", True) for i in range(500)])
    assert ((audit >= 0.8) & (audit <= 1.0)).all()


def test_network_audit_covers_every_contender_and_locals_only_the_unknown():
    audit_hash = next(f"0x{i}" for i in range(10_000) if plan.is_audit_period(f"0x{i}"))
    calm_hash = next(f"0x{i}" for i in range(10_000)
                     if not plan.is_audit_period(f"0x{i}") and not plan.is_young_audit_period(f"0x{i}"))
    cs = [Contender(1, "old", "inpaint", 100, 100, 0), Contender(2, "known", "inpaint", 100, 100, 0),
          Contender(3, "young", "inpaint", 100, 100, 9_000)]
    block, pb = 10_000, 300  # 'young' registered 1,000 blocks ago: under 24 periods
    everyone = plan.targets(cs, audit_hash, block, pb, {("known", "inpaint")})
    assert all(t.audit and t.reason == "network" for t in everyone)
    calm = {t.contender.hotkey: t for t in plan.targets(cs, calm_hash, block, pb, {("known", "inpaint")})}
    assert calm["old"].reason == "local-first" and calm["known"].reason == ""
    assert calm["young"].reason == ""  # young, but the hash drew no joint young audit


def test_schedule_spreads_requests_and_never_exceeds_the_budget():
    c = Contender(1, "hk", "inpaint", 1000, 1000, 0)
    target = plan.Target(c, 0.9, True, "network")
    sends = plan.schedule([target], {}, 100.0, random.Random(1))
    assert sum(s.units for s in sends) == 900
    times = [s.at for s in sends]
    assert times == sorted(times) and times[-1] <= 100 * plan.SEND_WINDOW
    gaps = np.diff(times)
    assert gaps.min() > 0  # never a burst
    with_organic = plan.schedule([target], {("hk", "inpaint"): 700}, 100.0)
    assert sum(s.units for s in with_organic) == 200  # organic counts first
    assert plan.schedule([target], {("hk", "inpaint"): 950}, 100.0) == []


def test_schedule_last_request_stops_at_the_budget():
    c = Contender(1, "hk", "inpaint", 50, 50, 0)  # 20 steps a request: 20, 20, then 10
    sends = plan.schedule([plan.Target(c, 1.0, True, "network")], {}, 10.0)
    assert [s.units for s in sends] == [20, 20, 10]
