"""The miner's Prometheus metrics (served on /metrics) and its one log line per request.

Labels are the task and the calling validator's hotkey (permit holders only: a few dozen), so an
operator sees who used how much of the declaration, and who was refused."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("miner.requests")


class MinerMetrics:
    def __init__(self, pools: dict):
        self.registry = CollectorRegistry()
        self.requests = Counter("sn19_miner_requests", "Requests answered, by HTTP status",
                                ["task", "validator", "status"], registry=self.registry)
        self.units = Counter("sn19_miner_units", "Units served (tokens or steps)",
                             ["task", "validator"], registry=self.registry)
        self.refused = Counter("sn19_miner_refused", "Requests answered 429, by reason",
                               ["task", "validator", "reason"], registry=self.registry)
        self.latency = Histogram("sn19_miner_latency_seconds", "Time to serve a request",
                                 ["task"], registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80))
        self.declared = Gauge("sn19_miner_declared_units",
                              "Declared capacity per period (the healthy workers')", ["task"],
                              registry=self.registry)
        self.up = Gauge("sn19_miner_worker_up", "1 while the worker answers, 0 while it is out",
                        ["task", "worker"], registry=self.registry)
        for pool in pools.values():
            self.workers(pool)

    def workers(self, pool) -> None:
        """A pool's workers' health and the declaration they make, as they are now."""
        self.declared.labels(pool.task).set(pool.declared())
        for worker in pool.workers:
            self.up.labels(pool.task, worker.name).set(int(worker.healthy))

    def served(self, task: str, validator: str, status: int, units: float, seconds: float) -> None:
        self.requests.labels(task, validator, str(status)).inc()
        if units:
            self.units.labels(task, validator).inc(units)
        self.latency.labels(task).observe(seconds)
        log.info("task=%s validator=%s status=%d units=%g seconds=%.3f",
                 task, validator, status, units, seconds)

    def refuse(self, task: str, validator: str, reason: str) -> None:
        self.refused.labels(task, validator, reason).inc()
        self.requests.labels(task, validator, "429").inc()
        log.info("task=%s validator=%s status=429 reason=%s", task, validator, reason)
