"""The incentive game, simulated with the project's real scheduling and scoring code.

Runs named scenarios (or a YAML of your own) over many periods and prints, per scenario, a table
of every miner (UIDs, declared, really served, reward share, and the share each validator gives
it), then writes PNG plots: reward against served capacity, reward over periods, and how closely
the validators' weight vectors agree. Deterministic for a seed.

    python scripts/simulate.py                      # every named scenario, plots in docs/
    python scripts/simulate.py --scenario over-claimer --periods 800
    python scripts/simulate.py --config my_scenario.yml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from core.scenarios import SCENARIOS, Scenario, load_scenario
from core.simulation import Result, simulate

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                   help="a named scenario (repeat for several; default: all of them)")
    p.add_argument("--config", help="a scenario YAML (miners, validators, periods)")
    p.add_argument("--periods", type=int, default=None, help="override each scenario's periods")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated block hashes")
    p.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNG plots")
    p.add_argument("--no-plots", action="store_true", help="print the tables only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    if not x.any() or not y.any():
        return float("nan")
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def agreement(result: Result) -> dict[str, list[float]]:
    """Per validator, per period: cosine of its weight vector with every other validator's mean."""
    names = list(result.vectors)
    out = {}
    for v in names:
        others = [w for w in names if w != v]
        if not others:
            continue
        out[v] = [cosine(result.vectors[v][t], np.mean([result.vectors[w][t] for w in others], 0))
                  for t in range(len(result.vectors[v]))]
    return out


def honest_r2(scenario: Scenario, result: Result) -> float | None:
    """R² of a proportional fit of reward on served capacity among honest miners of one task."""
    honest = [s for s in scenario.setups if s.honest and len(s.declared) == 1]
    tasks = {s.task for s in honest}
    if len(honest) < 3 or len(tasks) != 1:
        return None
    x = np.array([s.capacity for s in honest])
    y = np.array([result.reward[s.name] for s in honest])
    slope = (x @ y) / (x @ x)
    return float(1 - ((y - slope * x) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def table(scenario: Scenario, result: Result) -> str:
    total = sum(result.reward.values()) or 1.0
    vnames = list(result.vectors)
    head = f"{'miner':<24} {'task':<14} {'uids':>4} {'declared':>9} {'served':>8} {'reward':>7}"
    head += "".join(f" {v[:14]:>14}" for v in vnames)
    lines = [f"== {scenario.name}: {scenario.about} ==",
             f"{len(result.vectors[vnames[0]])} periods, {result.audits} network-wide audits",
             head]
    offset = 0
    for s in scenario.setups:
        uids = range(offset, offset + len(s.declared))
        offset += len(s.declared)
        per_v = []
        for v in vnames:
            got = sum(vec[list(uids)].sum() for vec in result.vectors[v])
            per_v.append(got / max(len(result.vectors[v]), 1))
        lines.append(f"{s.name:<24} {s.task[:14]:<14} {len(s.declared):>4} {sum(s.declared):>9g} "
                     f"{s.capacity:>8g} {result.reward[s.name] / total:>7.3f}"
                     + "".join(f" {x:>14.3f}" for x in per_v))
    r2 = honest_r2(scenario, result)
    if r2 is not None:
        lines.append(f"honest miners: reward ~ served capacity, R² = {r2:.4f}")
    agree = agreement(result)
    for v, xs in agree.items():
        finite = [x for x in xs if np.isfinite(x)]
        if finite:
            lines.append(f"validator {v}: cosine with the others, mean {np.mean(finite):.4f}, "
                         f"min {np.min(finite):.4f}")
    return "\n".join(lines)


def plots(runs: dict[str, tuple[Scenario, Result]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    name = "default" if "default" in runs else next(iter(runs))
    scenario, result = runs[name]
    total = sum(result.reward.values()) or 1.0

    fig, ax = plt.subplots(figsize=(7.5, 5))
    shares = {s.name: result.reward[s.name] / total for s in scenario.setups}
    label_y = _spread(sorted(shares.items(), key=lambda kv: kv[1]), gap=0.011)
    for s in scenario.setups:
        share = shares[s.name]
        ax.scatter(s.capacity, share, marker="o" if s.honest else "x", s=60,
                   color="tab:blue" if s.honest else "tab:red")
        ax.annotate(f"{s.name} {share:.3f}", (s.capacity, share), fontsize=7,
                    xytext=(s.capacity + 0.04 * max(x.capacity for x in scenario.setups),
                            label_y[s.name]),
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"})
    honest = [s for s in scenario.setups if s.honest and len(s.declared) == 1]
    if honest:
        x = np.array([s.capacity for s in honest])
        y = np.array([result.reward[s.name] / total for s in honest])
        k = (x @ y) / (x @ x)
        xs = np.linspace(0, x.max() * 1.05, 10)
        ax.plot(xs, k * xs, "--", color="tab:blue", lw=1, label="proportional to served capacity")
    ax.set(xlabel="units really served per period", ylabel="share of rewards",
           title=f"Reward vs served capacity ({name}, {len(result.vectors[next(iter(result.vectors))])} periods)")
    ax.legend(loc="upper left", fontsize=8)
    written.append(_save(fig, out / "reward_vs_capacity.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in scenario.setups:
        series = np.convolve(result.per_period[s.name], np.ones(10) / 10, mode="valid")
        ax.plot(series, lw=1.2, ls="-" if s.honest else "--", label=s.name)
    ax.set(xlabel="period", ylabel="reward per period (10-period mean)",
           title=f"Reward over periods ({name})")
    ax.legend(fontsize=7, ncol=2)
    written.append(_save(fig, out / "reward_over_periods.png"))

    shown = [n for n in ("validators", "default") if n in runs] or [name]
    fig, axes = plt.subplots(len(shown), 1, figsize=(7.5, 3.2 * len(shown)), squeeze=False)
    for ax, n in zip(axes[:, 0], shown):
        sc, res = runs[n]
        lowest = 1.0
        for v, xs in agreement(res).items():
            val = sc.validators[v]
            ax.plot(xs, lw=1, label=f"{v} (stake {val.stake:g}, organic {val.organic:.0%})")
            lowest = min([lowest] + [x for x in xs if np.isfinite(x)])
        ax.set(ylabel="cosine with the others", ylim=(min(0.98, lowest - 0.02), 1.005),
               title=f"Agreement between validators' weight vectors: {n}")
        ax.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("period")
    written.append(_save(fig, out / "validator_agreement.png"))
    return written


def _spread(items: list[tuple[str, float]], gap: float) -> dict[str, float]:
    """Label heights in value order, at least ``gap`` apart, so labels never overlap."""
    out, last = {}, -1.0
    for name, value in items:
        last = max(value, last + gap)
        out[name] = last
    return out


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        scenarios = [load_scenario(args.config)] if args.config else \
            [SCENARIOS[n] for n in (args.scenario or sorted(SCENARIOS))]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from tqdm import tqdm

    runs = {}
    for scenario in scenarios:
        periods = args.periods or scenario.periods
        with tqdm(total=periods, desc=scenario.name, disable=args.quiet, leave=False,
                  file=sys.stderr) as bar:
            result = simulate(scenario.setups, periods, validators=scenario.validators,
                              seed=args.seed, progress=bar.update)
        runs[scenario.name] = (scenario, result)
        print(table(scenario, result), end="\n\n", flush=True)
    if not args.no_plots:
        for path in plots(runs, Path(args.out)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
