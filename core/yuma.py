"""Yuma consensus as subtensor computes a miner's incentive and a validator's trust each epoch,
for the simulator: the rules are paid after it, not on one validator's weights.

Followed: opentensor/subtensor ``pallets/subtensor/src/epoch/run_epoch.rs`` (``epoch_dense``:
active stake of permitted validators, normalised; rows of weights normalised; consensus as the
stake-weighted median per miner at kappa; weights clipped at consensus; validator trust = the
row sum of clipped weights; ranks = stake-weighted clipped weights, normalised into incentive) and
``math.rs`` (``weighted_median_col``). Bonds and dividends, which only split the validators'
emission, are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KAPPA = 0.5


@dataclass(frozen=True)
class Epoch:
    incentive: np.ndarray  # per miner, sums to 1 (0 everywhere when no weight was set)
    consensus: np.ndarray  # per miner
    vtrust: np.ndarray  # per validator


def weighted_median(values: np.ndarray, stake: np.ndarray, kappa: float = KAPPA) -> float:
    """The highest level that validators holding at least ``kappa`` of the stake weigh at or
    above (subtensor's stake-weighted median with minority = 1 - kappa)."""
    order = np.argsort(-values, kind="stable")
    held = np.cumsum(stake[order])
    i = int(np.searchsorted(held, kappa * held[-1] - 1e-12))
    return float(values[order][min(i, len(order) - 1)])


def epoch(weights: np.ndarray, stake: np.ndarray, kappa: float = KAPPA) -> Epoch:
    """``weights``: validators x miners as set (any scale); ``stake``: per validator."""
    w = np.asarray(weights, float)
    s = np.asarray(stake, float)
    s = s / s.sum()
    rows = w.sum(axis=1, keepdims=True)
    w = np.divide(w, rows, out=np.zeros_like(w), where=rows > 0)
    live = s > 0
    consensus = np.array([weighted_median(w[live, j], s[live], kappa) for j in range(w.shape[1])])
    clipped = np.minimum(w, consensus)
    ranks = s @ clipped
    incentive = ranks / ranks.sum() if ranks.sum() > 0 else ranks
    return Epoch(incentive, consensus, clipped.sum(axis=1))
