"""The simulator: the real period step and Yuma over modelled miners, its CLI and scenario files."""

import subprocess
import sys

import numpy as np
import pytest

from core.scenarios import VALIDATORS, judge, load_scenario, strategies
from core.simulation import Setup, Validator, simulate
from core.yuma import epoch


def test_yuma_clips_weights_above_consensus_and_costs_the_outlier_vtrust():
    # three validators weigh two miners; the 20% one alone favours miner 0
    w = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    e = epoch(w, np.array([0.4, 0.4, 0.2]))
    assert e.consensus.tolist() == [0.5, 0.5]
    assert e.vtrust.tolist() == pytest.approx([1.0, 1.0, 0.6])
    # ranks: stake x clipped weights (0.5 and 0.4 + 0.02), normalised
    assert e.incentive.tolist() == pytest.approx([0.5 / 0.92, 0.42 / 0.92])


def test_windows_open_about_once_a_period_in_the_simulation():
    result = simulate([Setup("a", 1000, (1000,))], 300, seed=4)
    assert 0.75 * 300 < result.windows < 1.05 * 300


def test_a_cheater_earns_nothing_and_honest_validators_keep_their_trust():
    result = simulate([Setup("honest", 1000, (1000,)), Setup("cheat", 1000, (1000,), quality=0.0)],
                      40, validators={"a": Validator(0.7), "b": Validator(0.3, 0.5)}, seed=1)
    assert result.reward["cheat"] == 0 and result.reward["honest"] > 30
    assert min(result.vtrust["a"] + result.vtrust["b"]) > 0.99


def test_capacity_rented_a_minute_into_each_window_is_the_measured_limit():
    """docs/protocol.md §11: a window's first minute holds too few requests to judge alone, so
    capacity rented once a window opens pays, pooled and on each validator's own view."""
    late = next(s for s in strategies() if s.name == "rent once a window opens")
    assert late.limit
    assert judge(late, 150, seed=2).ratio > 1 and judge(late, 150, seed=2, pooled=False).ratio > 1


def test_deterministic_for_a_seed():
    setups = [Setup("a", 1000, (1000,)), Setup("b", 500, (900,))]
    assert simulate(setups, 30, seed=5).reward == simulate(setups, 30, seed=5).reward
    assert simulate(setups, 60, seed=5).reward != simulate(setups, 60, seed=6).reward


@pytest.mark.process
def test_cli_prints_the_strategy_table_and_draws_it(tmp_path):
    out = subprocess.run([sys.executable, "scripts/simulate.py", "--strategy", "over-claim x2",
                          "--strategy", "stake-first", "--periods", "60", "--plot", str(tmp_path),
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "over-claim x2" in out.stdout and "stake-first" in out.stdout
    assert "R² = 1.0000" in out.stdout and "lowest vtrust per validator" in out.stdout
    assert (tmp_path / "strategies.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.process
def test_custom_scenario_from_yaml(tmp_path):
    path = tmp_path / "s.yml"
    path.write_text("""
name: mine
periods: 30
miners:
  - {name: big, capacity: 3000, declared: [3000]}
  - {name: small, capacity: 1000, declared: [1000]}
validators:
  a: {stake: 2}
  b: {stake: 1, organic: 0.5}
""")
    sc = load_scenario(path)
    result = simulate(sc.setups, sc.periods, validators=sc.validators)
    assert result.reward["big"] == pytest.approx(3 * result.reward["small"])
    out = subprocess.run([sys.executable, "scripts/simulate.py", "--config", str(path),
                          "--quiet"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "== mine:" in out.stdout


@pytest.mark.process
def test_bad_scenario_file_is_one_clear_error(tmp_path):
    path = tmp_path / "s.yml"
    path.write_text("miners:\n  - {name: x, capacity: 10, declared: [10], rent_share: 2}\n")
    with pytest.raises(ValueError, match=r"s.yml: miners.0.rent_share: .*less than or equal to 1"):
        load_scenario(path)
    out = subprocess.run([sys.executable, "scripts/simulate.py", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("error: ")


def test_the_named_validators_span_stakes_down_to_one_percent():
    stakes = sorted(v.stake for v in VALIDATORS.values())
    assert stakes[0] == 0.01 and any(v.organic > 0.5 for v in VALIDATORS.values())
