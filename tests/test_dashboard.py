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
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    asked = {name for e in exprs for name in re.findall(r"\bsn19_[a-z_]+", e)}
    names = exported(MinerMetrics({}).registry) | exported(ValidatorMetrics().registry)
    assert asked and asked <= names, asked - names
    # and every metric the neurons export is drawn somewhere
    assert {n for n in names if not n.endswith(("_sum", "_count", "_created"))} - asked == set()


def dashboard() -> dict:
    return json.loads((ROOT / "docs/grafana/sn19.json").read_text())


PER_PERIOD = re.compile(r'sn19_miner_declared_units|field="(declared|credited|effective|'
                        r'demonstrated)"')


def kind(expr: str) -> str:
    """What an expression's figures are: per second, counts over a range (a period's when the
    range is the $period variable), units a period (declarations and what they credit), or
    another gauge's value."""
    if "rate(" in expr:
        return "per second"
    if ranges := set(re.findall(r"increase\([^\]]*\[([^\]]+)\]", expr)):
        return "per period" if ranges == {"$period"} else f"per {'/'.join(sorted(ranges))}"
    return "per period" if PER_PERIOD.search(expr) and "/" not in expr else "value"


def test_each_panel_draws_one_kind_of_figure():
    for p in dashboard()["panels"]:
        kinds = {kind(t["expr"]) for t in p.get("targets", [])}
        assert len(kinds) <= 1, (p["title"], kinds)




def test_tokens_and_steps_are_drawn_per_task_and_per_one_validator():
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    # one validator at a time: a sum never adds up the validators Prometheus scrapes
    assert variables["validator"]["multi"] is False
    assert variables["validator"]["includeAll"] is False
    for p in d["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            if "sn19_validator_" in expr:
                assert 'instance=~"$validator"' in expr, (p["title"], expr)
            if "sn19_miner_" in expr:
                assert 'instance=~"$miner"' in expr, (p["title"], expr)
            if kind(expr) == "per period":  # tokens or steps: one task a panel
                var = "miner_task" if "sn19_miner_" in expr else "task"
                assert f'task=~"${var}"' in expr and p.get("repeat") == var, (p["title"], expr)


def test_the_docs_name_metrics_as_the_code_exports_them():
    names = exported(MinerMetrics({}).registry) | exported(ValidatorMetrics().registry)
    for doc in ("docs/operations.md", "docs/protocol.md", "docs/prometheus/alerts.yml"):
        written = set(re.findall(r"\bsn19_(?:miner|validator)_[a-z_]+", (ROOT / doc).read_text()))
        assert written <= names, (doc, written - names)


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
