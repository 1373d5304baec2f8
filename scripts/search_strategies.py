"""Search the miner strategy space for the strategy that beats an honest twin of the same cost
(docs/protocol.md §11), and measure the named cases: the simulator's real period step, pooling
and Yuma, ten validators of 30% down to 1% of the stake.

Prints the best strategies found with their ratio to the twin and the bound the rules guarantee
(1 for a miner alone; 1 / (1 - s) with a colluding validator of stake s), then the named cases:
refusals, per-validator declarations, stake-first, capacity rented late (the measured limit),
colluders and lying validators. Deterministic for a seed.

    python scripts/search_strategies.py                       # 2000 strategies, 3 seeds
    python scripts/search_strategies.py --evaluations 200 --periods 60 --seeds 1   # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/

from core.cli import parser
from core.strategy_search import bound, fitness, liar_cases, named_cases, search


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--evaluations", type=int, default=2000, help="strategies evaluated")
    p.add_argument("--periods", type=int, default=120, help="periods each evaluation runs")
    p.add_argument("--seeds", type=int, default=3, help="seeds each strategy is averaged over")
    p.add_argument("--seed", type=int, default=0, help="seed of the search itself")
    p.add_argument("--top", type=int, default=10, help="best strategies printed")
    p.add_argument("--no-named", action="store_true", help="skip the named cases")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    seeds = tuple(range(args.seeds))
    started = time.monotonic()
    with tqdm(total=args.evaluations, desc="strategies", disable=args.quiet, file=sys.stderr,
              leave=False) as bar:
        best = search(args.evaluations, args.periods, seeds, np.random.default_rng(args.seed),
                      keep=args.top, progress=bar.update)
    print(f"== search: {args.evaluations} strategies, {args.periods} periods x {args.seeds} "
          f"seed(s), {time.monotonic() - started:.0f} s ==")
    print(f"{'ratio':>7} {'bound':>6} {'/bound':>7}  strategy")
    for f in best:
        print(f"{f.ratio:>7.3f} {bound(f.genome):>6.3f} {f.excess:>7.3f}  {f.genome.describe()}")
    print(f"search_best_over_bound: {best[0].excess:.4f} ratio")
    if args.no_named:
        return 0
    print(f"\n== named cases: {args.periods} periods x {args.seeds} seed(s) ==")
    for name, genome, pooled in named_cases():
        ratio = fitness(genome, args.periods, seeds, pooled)
        print(f"{name:<62} x{ratio:.3f} (bound {bound(genome):.3f})", flush=True)
    for name, ratio, least in liar_cases(args.periods, seeds):
        print(f"{name:<62} victim x{ratio:.3f} (level's bound {least:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
