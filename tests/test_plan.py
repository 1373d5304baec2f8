import hashlib
import random

import numpy as np

from core import plan
from core.budget import Contender, contenders, stake_share
from core.chain import Metagraph, Neuron
from core.period import open_period
from core.request_shapes import smallest_request


def neuron(uid, stake=0.0, permit=False, registered_at=0):
    return Neuron(uid, f"hk{uid}", f"ck{uid}", stake, permit, "http://x", registered_at)


def hashes(n, seed="s"):
    return ["0x" + hashlib.sha256(f"{seed}:{b}".encode()).hexdigest() for b in range(n)]


def test_stake_share_and_budgets():
    graph = Metagraph(100, (neuron(0, 300, True), neuron(1, 100, True), neuron(2, 1e6), neuron(3)))
    assert stake_share(graph, "hk0") == 0.75
    assert stake_share(graph, "hk2") == 0.0  # stake without a permit is no share
    cs = contenders(graph, {"hk3": {"inpaint": 400.0}}, 0.75)
    assert cs == [Contender(3, "hk3", "inpaint", 400.0, 300.0, 0)]


def test_a_silent_miner_or_dropped_task_declares_zero_and_stays_a_contender():
    graph = Metagraph(100, (neuron(0, 300, True), neuron(3), neuron(4)))
    previous = [
        ("hk3", "inpaint"),
        ("hk3", "chat-llama-3"),
        ("hk4", "inpaint"),
        ("gone", "inpaint"),
    ]
    opening = open_period(graph, {"hk3": {"inpaint": 400.0}}, previous, "hk0")
    assert {(c.hotkey, c.task): c.declared for c in opening.contenders} == {
        ("hk3", "inpaint"): 400.0, ("hk3", "chat-llama-3"): 0.0, ("hk4", "inpaint"): 0.0}


def test_windows_open_about_once_a_period_memorylessly_and_never_overlap():
    pb = 300
    w = plan.window_blocks(pb)
    hs = hashes(300_000)
    anchor, opened = plan.openings(0, hs, pb)
    assert anchor == w - 1
    gaps = np.diff(opened)
    assert (gaps >= w).all()  # a block inside an open window opens none
    per_period = len(opened) / ((len(hs) - anchor) / pb)
    assert 0.85 < per_period < 1.0  # 1 / (1 + W/period) = 0.92 expected
    # memoryless: the wait after a window's end is geometric, its mean ~ period_blocks
    waits = gaps - w
    assert 0.85 * pb < waits.mean() < 1.15 * pb
    assert abs(np.mean(waits < pb) - (1 - (1 - 1 / pb) ** pb)) < 0.05
    # every validator finds the same windows from any anchor before them
    later_anchor, later = plan.openings(50_000, hs[50_000:], pb)
    assert [b for b in later if b >= 60_000] == [b for b in opened if b >= 60_000]


def test_window_plan_sends_the_full_rate_over_the_slices_and_counts_organic_first():
    c = Contender(1, "hk", "inpaint", 60_000.0, 30_000.0, 0)  # 20 steps a request
    pb = 300
    units = plan.window_units(c, pb)
    assert units == 30_000 * 25 / 300
    sends = plan.window_plan([c], {}, pb, 100.0, rng=random.Random(1))
    assert sum(s.units for s in sends) == units
    times = [s.at for s in sends]
    assert times == sorted(times) and times[-1] < 100
    per_slice = np.histogram(times, bins=plan.SLICES, range=(0, 100))[0]
    assert per_slice.min() >= len(sends) // plan.SLICES - 1  # evenly spread
    # caps: request i goes only while less than its running share is used (organic first)
    assert [s.cap for s in sends[:3]] == [20, 40, 60]
    resumed = plan.window_plan([c], {("hk", "inpaint"): 500.0}, pb, 50.0, left=0.5)
    assert abs(sum(s.units for s in resumed) - units / 2) <= 20 and resumed[0].cap == 520


def test_a_small_budget_still_gets_one_request_where_the_budget_allows():
    small = Contender(1, "hk", "playground-text-to-image", 600.0, 300.0, 0)  # 50 steps a request
    sends = plan.window_plan([small], {}, 300, 60.0)
    assert [s.units for s in sends] == [50]
    left = plan.window_plan([small], {("hk", "playground-text-to-image"): 290.0}, 300, 60.0)
    assert [s.units for s in left] == [10]  # what the budget still allows
    assert plan.window_plan([small], {("hk", "playground-text-to-image"): 300.0}, 300, 60.0) == []
    assert plan.window_plan([Contender(1, "hk", "inpaint", 0.0, 0.0, 0)], {}, 300, 60.0) == []
    # a chat request whose prompt alone may take more than the budget left is not sent
    chat = Contender(1, "hk", "chat-llama-3", 6000.0, 3000.0, 0)
    allowed = chat.budget - smallest_request(chat.task)
    assert [s.units for s in plan.window_plan([chat], {("hk", chat.task): allowed}, 300, 60.0)
            ] == [smallest_request(chat.task)]
    assert plan.window_plan([chat], {("hk", chat.task): allowed + 1}, 300, 60.0) == []


def test_background_is_a_small_sample_bounded_by_the_budget_alone():
    c = Contender(1, "hk", "inpaint", 60_000.0, 30_000.0, 0)
    sends = plan.background_plan([c], 3600.0, rng=random.Random(2))
    assert sum(s.units for s in sends) == 0.01 * 30_000 and all(s.cap is None for s in sends)
    assert max(s.at for s in sends) < 3600


def test_slices_cut_the_window_in_five():
    w = plan.Window(100, 1000.0, 50.0)
    assert [w.slice_of(t) for t in (999.9, 1000.0, 1009.9, 1010.0, 1049.9, 1050.0)] == [
        None, 0, 0, 1, 4, None]



def test_a_window_is_shared_by_processes_each_miner_to_one_and_loads_about_equal():
    rng = random.Random(6)
    cs = [Contender(uid, f"hk{uid}", task, b, b, 0) for uid in range(40)
          for task, b in (("chat-llama-3", rng.uniform(1e5, 9e7)), ("inpaint", 2e4))]
    members = ["b", "a", "c"]
    parts = {m: plan.shard(cs, members, m) for m in members}
    assert sorted((c.hotkey, c.task) for p in parts.values() for c in p) == sorted(
        (c.hotkey, c.task) for c in cs)  # each contender exactly once
    for m, part in parts.items():
        others = {c.hotkey for n, p in parts.items() if n != m for c in p}
        assert not {c.hotkey for c in part} & others  # a miner's tasks stay together
    load = {m: sum(c.budget * (0.02 if c.task == "chat-llama-3" else 0.12) for c in p)
            for m, p in parts.items()}
    assert max(load.values()) < 1.25 * min(load.values())
    assert plan.shard(cs, ["a"], "a") == cs and plan.shard(cs, ["a"], "z") == []
    assert plan.shard(list(reversed(cs)), members, "a") == list(reversed(parts["a"]))
