"""The validator's Prometheus metrics, served on its peer endpoint's ``/metrics`` (this host only
unless ``--public-metrics``; ``docs/grafana/sn19.json`` draws them).

What an operator watches: the window reports exchanged (fetched, missing, rejected, and the stake
each window was pooled from), the checker (results checked and failed, dropped, queued), weights
(set, failed, skipped), and, per contender after each close, what the period scored (declared,
demonstrated, credited, reliability, quality, effective) by uid, hotkey and task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.pooling import Pooling
from core.scoring import effective

SCORED = ("declared", "demonstrated", "credited", "reliability", "quality", "effective")


class _CheckerStats(Collector):
    """The checker's counts, read when Prometheus scrapes (the checker knows nothing of it)."""

    def __init__(self, checker: Callable[[], object | None]):
        self.checker = checker

    def collect(self) -> Iterable[Metric]:
        checker = self.checker()
        checked = CounterMetricFamily("sn19_validator_checks", "Results checked against the "
                                      "reference models, by result", labels=["result"])
        dropped = CounterMetricFamily("sn19_validator_checks_dropped", "Results dropped unchecked "
                                      "because the queue was full")
        queued = GaugeMetricFamily("sn19_validator_check_queue", "Results waiting for a check")
        late = CounterMetricFamily("sn19_validator_checks_late", "Checks that ended after their "
                                   "period closed, counted at the next close")
        if checker is not None:
            stats = checker.stats  # type: ignore[attr-defined]
            checked.add_metric(["passed"], stats.checked - stats.failed)
            checked.add_metric(["failed"], stats.failed)
            dropped.add_metric([], stats.dropped)
            queued.add_metric([], len(checker.queue))  # type: ignore[attr-defined]
            late.add_metric([], stats.late)
        yield from (checked, dropped, queued, late)


class ValidatorMetrics:
    def __init__(self, checker: Callable[[], object | None] = lambda: None):
        self.registry = r = CollectorRegistry()
        self.reports = Counter("sn19_validator_reports", "Other validators' window reports asked "
                               "for, by result (fetched, missing, rejected)", ["result", "reason"],
                               registry=r)
        self.coverage = Gauge("sn19_validator_report_coverage", "Share of permitted stake whose "
                              "reports the last scored window was pooled from (0: own view)",
                              registry=r)
        self.windows = Counter("sn19_validator_windows_scored", "Windows scored, pooled or from "
                               "this validator's own view", ["view"], registry=r)
        self.weights = Counter("sn19_validator_weights", "Weight vectors by result (set, "
                               "committed, revealed, deferred: rate-limited until a later "
                               "block, failed, skipped: nothing to set)", ["result"], registry=r)
        self.weights_age = Gauge("sn19_validator_weights_age_blocks", "Blocks since the chain "
                                 "last recorded this validator's weights (LastUpdate)",
                                 registry=r)
        self.activity_cutoff = Gauge("sn19_validator_activity_cutoff_blocks", "The subnet's "
                                     "activity cutoff: weights older than this earn no "
                                     "dividends", registry=r)
        self.period = Gauge("sn19_validator_period", "The last period closed", registry=r)
        self.scored = Gauge("sn19_validator_contender", "Each contender as the last close scored "
                            "it (declared, demonstrated and credited in units a period)",
                            ["uid", "hotkey", "task", "field"], registry=r)
        r.register(_CheckerStats(checker))

    def pooled(self, pooling: Pooling) -> None:
        self.coverage.set(pooling.coverage if pooling.used else 0.0)
        self.windows.labels("pooled" if pooling.used else "own").inc()

    def closed(self, period: int, rows) -> None:
        """A period's close: its rows (``core.period.Row``) replace the last ones."""
        self.period.set(period)
        self.scored.clear()
        for row in rows:
            c, s = row.contender, row.state
            values = (c.declared, s.demonstrated, s.credited, s.reliability, s.quality,
                      effective(s))
            for name, value in zip(SCORED, values):
                self.scored.labels(str(c.uid), c.hotkey, c.task, name).set(value)
