"""The miner app's settings, the one source of its flags' defaults (``neurons/miner.py`` reads
them from here without importing the app)."""

from __future__ import annotations

from dataclasses import dataclass

from core.protocol import MAX_IMAGE_B64_CHARS

DEFAULT_MAX_BODY = 2 * MAX_IMAGE_B64_CHARS + 2**20  # an inpaint request's two images and change


@dataclass(frozen=True)
class MinerSettings:
    """The app's settings (the miner's flags of the same names)."""

    sync_interval_s: float = 12.0  # between reads of the chain's head and metagraph
    health_interval_s: float = 5.0  # between probes of the workers
    max_body: int = DEFAULT_MAX_BODY  # bytes of a request body, beyond the per-path limits
    body_timeout_s: float = 30.0  # for a request's body to arrive
    public_metrics: bool = False  # /metrics to any address, not only this host
