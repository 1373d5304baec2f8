"""Quality checking (docs/protocol.md §8): the validator recomputes a sample of results with its
own reference models and fails what the requested model, seed and settings would not have produced.
A failed check is quality 0; a passed one is the speed factor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str = ""
