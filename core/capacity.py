"""A declaration as both sides read it (docs/protocol.md §3.1): what a miner advertises and a
validator fetches is clamped the same way. The miner's YAML that produces it is
``core/miner/config.py``."""

from __future__ import annotations

from collections.abc import Mapping

from core.tasks import TASKS


def clamp_declaration(raw: Mapping[str, object]) -> dict[str, float]:
    """docs/protocol.md §3.1: drop unknown tasks and non-numbers, clamp to [0, max], drop what
    rounds to 0."""
    out: dict[str, float] = {}
    for task_id, value in raw.items():
        task = TASKS.get(task_id)
        if task is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        clamped = task.clamp(float(value))
        if clamped > 0:
            out[task_id] = clamped
    return out
