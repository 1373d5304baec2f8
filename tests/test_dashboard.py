"""The Grafana dashboard in the repository asks only for metrics the neurons export: a renamed
metric fails here, not on an operator's empty panel."""

import json
import re

from prometheus_client import CollectorRegistry

from core.miner.metrics import MinerMetrics
from core.validator.metrics import ValidatorMetrics
from devtools.localproc import ROOT

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "summary": ("_sum", "_count")}


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose, whether or not it has samples yet."""
    return {m.name + suffix for m in registry.collect() for suffix in SUFFIXES.get(m.type, ("",))}


def test_every_panel_queries_a_metric_the_code_exports():
    dashboard = json.loads((ROOT / "docs/grafana/sn19.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    asked = {name for e in exprs for name in re.findall(r"\bsn19_[a-z_]+", e)}
    names = exported(MinerMetrics({}).registry) | exported(ValidatorMetrics().registry)
    assert asked and asked <= names, asked - names
    # and every metric the neurons export is drawn somewhere
    assert {n for n in names if not n.endswith(("_sum", "_count", "_created"))} - asked == set()


def test_the_validator_exports_its_checker_reports_weights_and_last_close():
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from core.budget import Contender
    from core.checking.service import Stats
    from core.period import Row
    from core.pooling import Pooling
    from core.scoring import ContenderState, PeriodOutcome

    checker = SimpleNamespace(stats=Stats(checked=7, failed=2, dropped=1), queue=[1, 2, 3])
    metrics = ValidatorMetrics(lambda: checker)
    metrics.pooled(Pooling(120, 0.8, ("a", "b")))
    metrics.weights.labels("set").inc()
    state = ContenderState(declared=100.0, demonstrated=80.0, credited=80.0, reliability=0.5)
    metrics.closed(4, [Row(Contender(3, "hk", "inpaint", 100.0, 25.0, 0), PeriodOutcome(100.0),
                           state, 2, 40.0)])
    text = generate_latest(metrics.registry).decode()
    row = 'hotkey="hk",task="inpaint",uid="3"'
    for line in ('sn19_validator_checks_total{result="passed"} 5.0',
                 'sn19_validator_checks_total{result="failed"} 2.0',
                 "sn19_validator_checks_dropped_total 1.0", "sn19_validator_check_queue 3.0",
                 "sn19_validator_report_coverage 0.8",
                 'sn19_validator_weights_total{result="set"} 1.0', "sn19_validator_period 4.0",
                 f'sn19_validator_contender{{field="effective",{row}}} 40.0',
                 f'sn19_validator_contender{{field="credited",{row}}} 80.0'):
        assert line in text, line
