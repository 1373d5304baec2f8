"""Strategies found by search, not listed (docs/protocol.md §11): a bounded search over the
strategy space finds nothing that beats an honest twin beyond the rules' bounds, the named cases
hold their bounds, and lying validators move a victim by about their stake."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from core.strategy_search import Genome, bound, fitness, liar_cases, named_cases, search

NOISE = 0.02  # the ratio of an honest genome to its twin differs by this much between seeds


def test_an_honest_genome_ties_its_twin():
    assert fitness(Genome(), 60, (0, 1)) == pytest.approx(1.0, abs=NOISE)


def test_a_bounded_search_finds_no_strategy_above_its_bound():
    best = search(60, 60, (0,), np.random.default_rng(11), keep=3)
    assert best[0].excess <= 1 + NOISE, best[0].genome.describe()


@pytest.mark.parametrize("name,genome,pooled", [c for c in named_cases() if "[limit]" not in c[0]],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_each_named_strategy_earns_no_more_than_its_bound(name, genome, pooled):
    assert fitness(genome, 80, (0,), pooled) <= bound(genome) * (1 + NOISE)


def test_the_limits_no_report_closes_are_what_the_protocol_states():
    limits = {name: fitness(g, 80, (0,), pooled) for name, g, pooled in named_cases()
              if "[limit]" in name}
    for name, ratio in limits.items():
        if "fakes its own share" in name:  # x 1 / (1 - s): its colluder's share, no more
            assert ratio == pytest.approx(bound(next(g for n, g, _ in named_cases()
                                                     if n == name)), abs=NOISE)
        else:  # capacity rented as a window opens pays: sampler replay's work (§8)
            assert ratio > 1, name


def test_a_lying_validator_costs_its_victim_about_its_stake():
    """The level's bound, and up to 0.05 more through the minutes it reports failed in."""
    for name, ratio, least in liar_cases(80, (0,)):
        assert ratio >= least - 0.05, name


@pytest.mark.process
def test_the_search_script_prints_its_best_and_the_named_cases():
    out = subprocess.run([sys.executable, "scripts/search_strategies.py", "--evaluations", "6",
                          "--periods", "30", "--seeds", "1", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "search_best_over_bound: " in out.stdout and "stake-first k=1.7" in out.stdout
    assert "liar 0.30 (fake slices)" in out.stdout
