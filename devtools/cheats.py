"""Cheats that the checker must catch, shared by the hostile test miner (tests/hostile_miner.py)
and the image checker's benchmark (scripts/bench_image_tolerance.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def every_other_unet_call(unet) -> Iterator[None]:
    """Within it, ``unet`` runs on every other call only and answers its last output in
    between: half the UNet's work a step at a time (a pipeline calls it once a step, batched),
    the asked schedule kept."""
    forward, calls, cache = unet.forward, [0], {}

    def every_other(sample, *args, **kwargs):
        if calls[0] % 2 == 0:
            cache["out"] = forward(sample, *args, **kwargs)
        calls[0] += 1
        return cache["out"]

    unet.forward = every_other
    try:
        yield
    finally:
        del unet.forward
