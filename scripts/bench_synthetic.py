"""The validator's synthetic traffic per period as a share of its budget (goal: at most 10%).

Runs the real plan (``core.plan``: window draws from block hashes, the window and background
requests, whole requests of each task's synthetic size) over many periods of simulated hashes,
for contenders of every task at budgets from a small miner's to a task's cap, and prints each
figure as ``name: value unit``. The reference in the same run is the rule's own expectation:
windows a period x W / period + the background share. Then the time one synthetic request
takes to make (``core.synthetic``: a chat request sized with the local subnet's
tokenizer, and an inpaint request with its image and mask made and encoded), on the validator's
event loop.

    python scripts/bench_synthetic.py            # 5,000 periods
    python scripts/bench_synthetic.py --quick    # 300 periods: that it runs (tests)
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

from core import plan
from core.budget import Contender
from core.cli import parser
from core.tasks import TASKS

PERIOD_BLOCKS = 300


def contenders(share: float) -> list[Contender]:
    """Every task at a small, a middling and a capped declaration, at a validator's ``share``."""
    out = []
    for task in TASKS.values():
        for i, fraction in enumerate((0.05, 0.3, 1.0)):
            declared = task.max_capacity * fraction
            out.append(Contender(i, f"hk{i}", task.id, declared, declared * share, 0))
    return out


def request_ms(task: str, units: int, image_size: int, repeats: int) -> float:
    """Milliseconds to make one synthetic request of ``task``, the mean of ``repeats``."""
    from core.sampling_mix import SamplingMix
    from core.synthetic import synthetic_request
    from core.validator.counting import PromptCounter

    rng, counter, mix = random.SystemRandom(), PromptCounter("tiny"), SamplingMix()
    synthetic_request(task, units, rng, image_size, counter, mix)  # the corpus loaded once
    began = time.perf_counter()
    for _ in range(repeats):
        synthetic_request(task, units, rng, image_size, counter, mix)
    return (time.perf_counter() - began) / repeats * 1000


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--periods", type=int, default=5000)
    p.add_argument("--share", type=float, default=0.2, help="the validator's stake share")
    p.add_argument("--quick", action="store_true", help="300 periods")
    a = p.parse_args()
    periods = 300 if a.quick else a.periods
    w = plan.window_blocks(PERIOD_BLOCKS)
    first = -4 * w  # earlier blocks, so a window open at block 0 is known
    hashes = ["0x" + hashlib.sha256(f"bench:{b}".encode()).hexdigest()
              for b in range(first, periods * PERIOD_BLOCKS)]
    _, opened = plan.openings(first, hashes, PERIOD_BLOCKS)
    per_period = np.bincount([b // PERIOD_BLOCKS for b in opened if b >= 0], minlength=periods)
    cs = contenders(a.share)
    budget = sum(c.budget for c in cs)
    window = sum(s.units for s in plan.window_plan(cs, {}, PERIOD_BLOCKS, 60.0))
    background = sum(s.units for s in plan.background_plan(cs, 3600.0))
    shares = (per_period * window + background) / budget
    expected = per_period.mean() * w / PERIOD_BLOCKS + plan.BACKGROUND
    print(f"periods: {periods} count")
    print(f"contenders: {len(cs)} count")
    print(f"windows_per_period: {per_period.mean():.3f} count")
    print(f"periods_without_window: {np.mean(per_period == 0) * 100:.1f} %")
    print(f"synthetic_share_mean: {shares.mean() * 100:.2f} %")
    print(f"synthetic_share_p95: {np.percentile(shares, 95) * 100:.2f} %")
    print(f"synthetic_share_expected: {expected * 100:.2f} %")
    print(f"synthetic_share_vs_expected: {shares.mean() / expected:.3f} ratio")
    repeats = 5 if a.quick else 50
    print(f"make_chat_request: {request_ms('chat-llama-3', 300, 64, repeats):.2f} ms")
    for size in (512, 1024):
        print(f"make_inpaint_request_{size}px: {request_ms('inpaint', 20, size, repeats):.1f} ms")


if __name__ == "__main__":
    main()
