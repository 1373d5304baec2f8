"""The incentive game of docs/protocol.md, simulated with the project's real period step and Yuma.

Runs every strategy of ``core.scenarios`` beside an honest twin of the same cost, in a pool of
honest miners and ten validators (stakes 30% down to 1%, two organic-heavy), and prints per
strategy its incentive after Yuma as a share of its twin's, with the validators' pooled window
reports (docs/protocol.md §9) and on each validator's own view, and the lowest validator vtrust;
then the honest checks (reward linear in capacity down to small miners, synthetic-only
and organic-heavy validators agreeing) and a plot of the table. Deterministic for a seed.

    python scripts/simulate.py                      # the table, plots in docs/
    python scripts/simulate.py --periods 2000 --seed 3
    python scripts/simulate.py --config my_scenario.yml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # core/ and devtools/

from core.cli import parser
from core.scenarios import POOL, VALIDATORS, Verdict, cosine, judge, load_scenario, strategies
from core.simulation import Setup, simulate

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--periods", type=int, default=400, help="periods each strategy runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated block hashes")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help="run only strategies whose name contains NAME (repeatable)")
    p.add_argument("--config", help="run a scenario YAML of your own instead (miners, "
                                    "validators, periods) and print each miner's reward")
    p.add_argument("--plot", metavar="DIR",
                   help="also draw the strategies' plot as DIR/strategies.png (needs the sim "
                        "extra; --plot docs redraws the README's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def strategy_table(periods: int, seed: int, names: list[str] | None, quiet: bool
                   ) -> list[tuple[Verdict, Verdict]]:
    from tqdm import tqdm

    chosen = [s for s in strategies() if not names or any(n in s.name for n in names)]
    rows = []
    for s in tqdm(chosen, desc="strategies", disable=quiet, leave=False, file=sys.stderr):
        rows.append((judge(s, periods, seed), judge(s, periods, seed, pooled=False)))
    return rows


def format_table(rows: list[tuple[Verdict, Verdict]], periods: int) -> str:
    lines = [f"== strategies vs an honest twin of the same cost: incentive after Yuma, "
             f"{periods} periods ==",
             f"{'strategy':<34} {'pooled':>7} {'own view':>9} {'vtrust min':>10} "
             f"{'(own)':>7}  about"]
    for pooled, own in rows:
        s = pooled.strategy
        mark = "  [measured limit]" if s.limit else "  [even]" if s.even else ""
        lines.append(f"{s.name:<34} {pooled.ratio:>7.3f} {own.ratio:>9.3f} "
                     f"{min(pooled.vtrust.values()):>10.4f} {min(own.vtrust.values()):>7.4f}  "
                     f"{s.about}{mark}")
    lines.append("pooled: validators score windows from the pooled reports (docs/protocol.md "
                 "§9); own view: each from its own requests")
    vnames = list(VALIDATORS)
    lowest = {v: min(p.vtrust[v] for p, _ in rows) for v in vnames}
    lines.append("lowest vtrust per validator (pooled): "
                 + ", ".join(f"{v} {x:.4f}" for v, x in lowest.items()))
    return "\n".join(lines)


def honest_checks(periods: int, seed: int) -> str:
    """Reward linear in served capacity down to small miners (R²), and how alike a
    synthetic-only and an organic-heavy validator weigh the same honest miners (cosine)."""
    setups = [Setup(f"honest-{c}", c, (c,)) for c in (60, 125, 250, 500, 1000, 2000, 4000)]
    result = simulate(setups, periods, validators=VALIDATORS, seed=seed)
    x = np.array([s.capacity for s in setups])
    y = np.array([result.reward[s.name] for s in setups])
    slope = (x @ y) / (x @ x)
    r2 = 1 - ((y - slope * x) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    cos = min(cosine(a, b) for a, b in zip(result.vectors["v30"], result.vectors["v20-organic"])
              if a.any() and b.any())
    return (f"honest miners: reward ~ served capacity, R² = {r2:.5f}\n"
            f"synthetic-only (v30) vs organic-heavy (v20-organic) weights: cosine min "
            f"{cos:.5f}\n{result.windows} windows in {periods} periods")


def plot(rows: list[tuple[Verdict, Verdict]], out: Path) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[sim]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    names = [p.strategy.name for p, _ in rows]
    ys = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    ax.barh(ys + 0.2, [p.ratio for p, _ in rows], 0.4, label="pooled window reports")
    ax.barh(ys - 0.2, [o.ratio for _, o in rows], 0.4, label="own view", alpha=0.6)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(2.1, max(max(p.ratio, o.ratio) for p, o in rows) * 1.05))
    ax.set(xlabel="incentive after Yuma / honest twin's", title="Strategies under protocol 6")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out / "strategies.png"
    fig.savefig(path, dpi=110)
    return path


def custom(path: str, seed: int) -> int:
    try:
        scenario = load_scenario(path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = simulate(scenario.setups, scenario.periods, validators=scenario.validators,
                      seed=seed)
    total = sum(result.reward.values()) or 1.0
    print(f"== {scenario.name}: {scenario.periods} periods, {result.windows} windows ==")
    for s in scenario.setups:
        print(f"{s.name:<24} uids {len(s.declared)} declared {sum(s.declared):>9g} "
              f"capacity {s.capacity:>8g} reward {result.reward[s.name] / total:.4f}")
    for v in scenario.validators:
        print(f"validator {v}: vtrust mean {np.mean(result.vtrust[v]):.4f}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.config:
        return custom(args.config, args.seed)
    rows = strategy_table(args.periods, args.seed, args.strategy, args.quiet)
    print(format_table(rows, args.periods), end="\n\n", flush=True)
    print(honest_checks(min(args.periods, 200), args.seed), flush=True)
    print(f"honest pool: {', '.join(s.name for s in POOL)}; validators: "
          + ", ".join(f"{k} ({v.stake:g}, organic {v.organic:.0%})" for k, v in VALIDATORS.items()))
    if args.plot:
        print(f"wrote {plot(rows, Path(args.plot))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
