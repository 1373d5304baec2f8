"""The simulator's scenarios, run briefly, and SPEC §4's properties on their rewards."""

import subprocess
import sys

import numpy as np
import pytest

from core.scenarios import SCENARIOS, load_scenario
from core.simulation import simulate


def run(name, periods=None, seed=0):
    sc = SCENARIOS[name]
    return sc, simulate(sc.setups, periods or sc.periods, validators=sc.validators, seed=seed)


def test_reward_is_proportional_to_served_capacity_among_honest_miners():
    sc, result = run("honest", periods=40)
    x = np.array([s.capacity for s in sc.setups])
    y = np.array([result.reward[s.name] for s in sc.setups])
    slope = (x @ y) / (x @ x)
    r2 = 1 - ((y - slope * x) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert r2 > 0.99


@pytest.mark.parametrize("name", ["over-claimer", "sybil", "time-sharer", "time-sharer-staggered",
                                  "slow", "early-refuser", "cheater", "stake-first"])
def test_no_behaviour_earns_more_than_its_honest_equivalent(name):
    _, result = run(name)
    assert result.audits >= 10  # "over many audits"
    assert result.reward[name] <= result.reward["honest-1000"] * (1 + 1e-9)


def test_the_cheater_earns_nothing():
    assert run("cheater", periods=30)[1].reward["cheater"] == 0


def test_synthetic_only_and_organic_heavy_validators_agree():
    _, result = run("validators", periods=16)
    for x, y in zip(result.vectors["synthetic-only"], result.vectors["organic-heavy"]):
        assert float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) > 0.99


def test_deterministic_for_a_seed():
    assert run("default", periods=30, seed=5)[1].reward == run("default", periods=30, seed=5)[1].reward
    assert run("default", periods=60, seed=5)[1].reward != run("default", periods=60, seed=6)[1].reward


def test_cli_prints_tables_and_writes_plots(tmp_path):
    out = subprocess.run([sys.executable, "scripts/simulate.py", "--scenario", "honest",
                          "--scenario", "validators", "--periods", "20", "--out", str(tmp_path),
                          "--quiet"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "== honest:" in out.stdout and "R² = 1.0000" in out.stdout
    for png in ("reward_vs_capacity", "reward_over_periods", "validator_agreement"):
        assert (tmp_path / f"{png}.png").read_bytes().startswith(b"\x89PNG")


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
                          "--no-plots", "--quiet"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "== mine:" in out.stdout


def test_bad_scenario_file_is_one_clear_error(tmp_path):
    path = tmp_path / "s.yml"
    path.write_text("miners:\n  - {name: x, capacity: 10, declared: [10], registered: [1, 2]}\n")
    with pytest.raises(ValueError, match=r"s.yml: miners.0.registered: .*one registration period"):
        load_scenario(path)
    out = subprocess.run([sys.executable, "scripts/simulate.py", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("error: ")
