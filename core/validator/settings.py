"""The validator's settings, the one source of its flags' defaults (``neurons/validator.py``
reads them from here, and the README's table is checked against that parser). A module of its
own so the flags are parsed without importing the validator's rooms."""

from __future__ import annotations

from dataclasses import dataclass

from core import plan
from core.chain_time import PERIOD_BLOCKS


@dataclass(frozen=True)
class Settings:
    period_blocks: int = PERIOD_BLOCKS
    capacity_timeout_s: float = 12.0
    # synthetic requests in flight at once, all miners together, in this process: a window of a
    # validator of stake share 0.05 keeps ~10,600 in flight when every miner declares the caps
    # (docs/operations.md); what cannot be sent within its slice counts as not served, so a
    # validator whose windows need more adds processes (each has this many)
    max_concurrency: int = 16384
    # ... to one miner beyond twice what its window's plan keeps in flight (sender.py): a slow
    # miner cannot hold the others' slots
    max_per_miner: int = 16
    background: float = plan.BACKGROUND  # share of each budget sampled outside windows
    image_size: int = 1024
    retention_periods: int = 96
    min_period_share: float = 0.5  # a fresh start with less of the period left waits for the next
    weight_retries: int = 3
    max_backoff_s: float = 60.0
    max_check_wait_s: float = 120.0  # at a period's end, for its results still being checked
    max_drain_s: float = 30.0  # ... for its requests still out (at most a tenth of the period)
    check: str = "gpu"  # reference models: gpu (production), cpu (tiny, local subnet) or off
    check_rate: float = 0.1
    check_queue: int = 256
    tokenizers: str = "production"  # counting chat prompts: production, or tiny (local subnet)
    share_reports: bool = True  # exchange window reports with the other validators and pool them
    report_timeout_s: float = 5.0  # for one validator's report
    max_report_wait_s: float = 30.0  # at a period's end, for reports still missing (at most
    #                                  a tenth of the period)


API_CONCURRENCY = 256  # organic API requests served at once (a stream holds its place to its end)
DEFAULTS = Settings()
