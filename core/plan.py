"""The synthetic plan for a period (SPEC §3.3-3.5): block-hash draws, audits, and requests spread
evenly with jitter.

Every draw that decides *what* is tested comes from the period's starting block hash (with the
hotkey and task where it is per contender), so all validators agree and no miner can know it
before the block exists. Only the timing jitter is private to the validator.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np

from core.budget import Contender
from core.tasks import TASKS

P_AUDIT = 0.05
P_YOUNG_AUDIT = 0.25
YOUNG_PERIODS = 24
AUDIT_F = (0.8, 1.0)
SMALL_F = 0.05
P_SMALL_F = 0.7
RANGE_F = (0.05, 0.10)
SEND_WINDOW = 0.9  # synthetic requests are spread over this leading share of the period


def _rng(*parts: str) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def is_audit_period(block_hash: str) -> bool:
    """Network-wide audit: one draw from the block hash alone."""
    return bool(_rng(block_hash, "audit").random() < P_AUDIT)


def is_young_audit_period(block_hash: str) -> bool:
    """The joint audit of every young, never-audited UID: a second draw from the hash alone."""
    return bool(_rng(block_hash, "young-audit").random() < P_YOUNG_AUDIT)


def test_fraction(block_hash: str, hotkey: str, task: str, audit: bool) -> float:
    """The share ``f`` of a contender's budget tested synthetically this period."""
    rng = _rng(block_hash, hotkey, task, "f")
    if audit:
        return float(rng.uniform(*AUDIT_F))
    if rng.random() < P_SMALL_F:
        return SMALL_F
    return float(rng.uniform(*RANGE_F))


def is_young(contender: Contender, block: int, period_blocks: int) -> bool:
    return block - contender.registered_at < YOUNG_PERIODS * period_blocks


@dataclass(frozen=True)
class Target:
    contender: Contender
    f: float
    audit: bool
    reason: str  # "network", "young", "local-first" or "" outside audits

    @property
    def units(self) -> float:
        """Units to consume this period, organic first, synthetic for the rest."""
        return self.f * self.contender.budget


def targets(contenders: list[Contender], block_hash: str, block: int, period_blocks: int,
            audited: set[tuple[str, str]]) -> list[Target]:
    """Decide f and audit status for every contender. ``audited`` holds the (hotkey, task) this
    validator has an audit on record of."""
    network = is_audit_period(block_hash)
    young_draw = is_young_audit_period(block_hash)
    out = []
    for c in contenders:
        known = (c.hotkey, c.task) in audited
        if network:
            reason = "network"
        elif not known and is_young(c, block, period_blocks):
            reason = "young" if young_draw else ""
        elif not known:
            reason = "local-first"
        else:
            reason = ""
        audit = bool(reason)
        out.append(Target(c, test_fraction(block_hash, c.hotkey, c.task, audit), audit, reason))
    return out


@dataclass(frozen=True)
class Send:
    at: float  # seconds after the period start
    target: Target
    units: int


def schedule(targets: list[Target], consumed: dict[tuple[str, str], float],
             period_seconds: float, rng: random.Random | None = None) -> list[Send]:
    """Synthetic requests for every target, each spread evenly over the send window with jitter,
    filling what was already consumed (organic traffic first; what was sent before a restart)
    left of ``f x budget``, and never exceeding the budget."""
    rng = rng or random.Random()
    window = period_seconds * SEND_WINDOW
    sends: list[Send] = []
    for t in targets:
        c = t.contender
        per = TASKS[c.task].units_per_synthetic
        used = consumed.get((c.hotkey, c.task), 0.0)
        cap = c.budget - used  # never beyond the budget, organic and synthetic together
        want = min(t.units - used, cap)
        if want < 1:
            continue
        n = math.ceil(want / per)
        last = int(min(per, cap - per * (n - 1)))
        gap = window / n
        for i in range(n):
            units = per if i < n - 1 else last
            if units >= 1:
                sends.append(Send(at=(i + rng.uniform(0.1, 0.9)) * gap, target=t, units=units))
    sends.sort(key=lambda s: s.at)
    return sends


def required_concurrency(sends: list[Send], period_seconds: float) -> float:
    """Requests the validator must keep in flight on average to send the plan at production
    speed; above its own concurrency limit, the plan cannot be met in the period."""
    busy = sum(TASKS[s.target.contender.task].expected_seconds(s.units) for s in sends)
    return busy / (period_seconds * SEND_WINDOW)
