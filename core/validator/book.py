"""The current period as the loop planned it, shared by the synthetic loop and the organic API:
each contender's budget, what it has consumed (organic traffic first, SPEC §3.3), how well it has
done, and the metagraph to reach it. Units are reserved before a request and settled after."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from core.chain import Metagraph
from core.plan import Target


@dataclass
class PeriodBook:
    period: int | None = None
    targets: dict[tuple[str, str], Target] = field(default_factory=dict)
    used: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    quality: dict[tuple[str, str], float] = field(default_factory=dict)
    metagraph: Metagraph | None = None
    ends_at: float = math.inf  # time.monotonic() at which the period ends

    def open(self, period: int, targets: list[Target], used: dict[tuple[str, str], float],
             metagraph: Metagraph, quality: dict[tuple[str, str], float],
             ends_at: float = math.inf) -> None:
        self.period, self.metagraph, self.quality = period, metagraph, quality
        self.ends_at = ends_at
        self.targets = {(t.contender.hotkey, t.contender.task): t for t in targets}
        self.used = defaultdict(float, used)

    def recording_period(self) -> int | None:
        """The period a request finishing now belongs to: past the book's end (while the next
        period's plan is being made) it is the next one, whose plan then counts it."""
        if self.period is None:
            return None
        return self.period + 1 if time.monotonic() >= self.ends_at else self.period

    def remaining(self, key: tuple[str, str]) -> float:
        t = self.targets.get(key)
        return max(t.contender.budget - self.used[key], 0.0) if t else 0.0

    def candidates(self, task: str, units: float) -> list[tuple[Target, float]]:
        """Contenders of ``task`` with at least ``units`` of budget left, each with its routing
        weight: remaining budget x recent quality (1 before any check)."""
        out = []
        for key, t in self.targets.items():
            left = self.remaining(key)
            if t.contender.task == task and left >= units:
                out.append((t, left * self.quality.get(key, 1.0)))
        return out

    def reserve(self, key: tuple[str, str], units: float) -> bool:
        if self.remaining(key) < units:
            return False
        self.used[key] += units
        return True

    def settle(self, key: tuple[str, str], reserved: float, actual: float) -> None:
        self.used[key] += actual - reserved

    def capacity(self) -> dict[str, dict[str, float]]:
        """Per task: this validator's budget and what is left of it this period."""
        out: dict[str, dict[str, float]] = {}
        for key, t in self.targets.items():
            entry = out.setdefault(t.contender.task, {"budget": 0.0, "remaining": 0.0})
            entry["budget"] += t.contender.budget
            entry["remaining"] += self.remaining(key)
        return out
