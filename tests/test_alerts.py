"""The Prometheus alert rules in docs/prometheus/ are valid, fire on the series they are written
for (their unit tests), and ask only for metrics the neurons export."""

import re
import shutil
import subprocess

import pytest
import yaml

from devtools.localproc import ROOT
from tests.test_dashboard import exported

RULES = ROOT / "docs/prometheus/alerts.yml"
promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool is not installed (Debian: apt install prometheus)")


def promtool_run(*args):
    return subprocess.run(["promtool", *args], cwd=RULES.parent, capture_output=True, text=True,
                          timeout=120)


@promtool
def test_promtool_accepts_the_rules():
    out = promtool_run("check", "rules", RULES.name)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@promtool
def test_the_rules_unit_tests_pass():
    out = promtool_run("test", "rules", "alerts.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_what_an_operator_must_act_on_has_a_rule_on_exported_metrics():
    from core.miner.metrics import MinerMetrics
    from core.validator.metrics import ValidatorMetrics

    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r["expr"] for r in rules}
    assert {"SN19WeightsNotSet", "SN19NearActivityCutoff", "SN19CreditedFarBelowDeclared",
            "SN19CheckerBacklog", "SN19NoPeriodClosed", "SN19ReportCoverageLow"} <= set(alerts)
    names = exported(MinerMetrics({}).registry) | exported(ValidatorMetrics().registry)
    for alert, expr in alerts.items():
        asked = set(re.findall(r"\bsn19_[a-z_]+", expr))
        assert asked and asked <= names, (alert, asked - names)
    assert "2 / 3" in alerts["SN19ReportCoverageLow"]
    tested = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())
    assert len({t["alertname"] for case in tested["tests"]
                for t in case["alert_rule_test"]}) >= 2
