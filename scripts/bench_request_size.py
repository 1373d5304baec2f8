"""Larger synthetic requests: what they save the validator and what they cost the statistics.

A validator's cost is mostly per request (``scripts/bench_window.py``), so a window that would
ask a contender more than ``plan.WINDOW_REQUESTS`` requests sends larger ones instead
(``plan.synthetic_size``). Fewer requests make each window slice's served fraction noisier,
and a window is credited by its worst slice. This runs the simulator (``core.simulation``: the
real plan, pooled reports and Yuma; requests served whole or failed) for a miner of half a
Llama task's cap (4.6 M tokens a period, 4 GPUs' worth) beside an honest twin, at three
growth thresholds: 40, 160 (the protocol's) and none (every request 300 tokens). For each: the
ratio of incentive after Yuma to the twin for over-claims of 1.02x and 1.05x (lower is better
caught) and for an honest miner with 0.2% failed requests (closer to 1 is better), and the
requests a share-1 window sends a contender at the cap (the validator's work).

    python scripts/bench_request_size.py            # 100 periods x 2 seeds (~1 min)
    python scripts/bench_request_size.py --quick    # 20 periods x 1 seed: that it runs (tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/

from core import plan
from core.budget import Contender
from core.chain_time import PERIOD_BLOCKS
from core.cli import parser
from core.scenarios import Strategy, judge
from core.simulation import Setup
from core.tasks import TASKS

TASK = "chat-llama-3"
THRESHOLDS = {"40": 40, "160": 160, "none": 10**12}
CASES = {"overclaim_1_02": {"declared_by": 1.02}, "overclaim_1_05": {"declared_by": 1.05},
         "honest_failing_0_2pct": {"fail": 0.002}}


def ratio(capacity: float, declared_by: float = 1.0, fail: float = 0.0, periods: int = 100,
          seeds: int = 2) -> float:
    """Mean incentive after Yuma of the case over its honest twin of the same capacity."""
    case = Setup("strategy", capacity, (capacity * declared_by,), (TASK,), fail=fail,
                 honest=False)
    twin = Setup("twin", capacity, (capacity,), (TASK,))
    return float(np.mean([judge(Strategy("case", "", case, twin), periods, seed).ratio
                          for seed in range(seeds)]))


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 periods and 1 seed: that it runs")
    a = p.parse_args()
    periods, seeds = (20, 1) if a.quick else (100, 2)
    capacity = TASKS[TASK].max_capacity / 2
    at_cap = Contender(1, "hk", TASK, TASKS[TASK].max_capacity, TASKS[TASK].max_capacity, 0)
    protocol = plan.WINDOW_REQUESTS
    try:
        for label, threshold in THRESHOLDS.items():
            plan.WINDOW_REQUESTS = threshold
            n, size = plan.requests_for(at_cap, plan.window_units(at_cap, PERIOD_BLOCKS), 0.0)
            print(f"requests_per_window_at_cap_{label}: {n} count")
            print(f"request_size_at_cap_{label}: {size} tokens")
            for name, case in CASES.items():
                figure = ratio(capacity, periods=periods, seeds=seeds, **case)
                print(f"{name}_{label}: {figure:.3f} ratio")
    finally:
        plan.WINDOW_REQUESTS = protocol


if __name__ == "__main__":
    main()
