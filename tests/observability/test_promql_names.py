"""Every PromQL expression of the dashboard and the alerts is valid PromQL (promtool) and names only metrics the
operator really exports (read from metrics.py), and the dashboard shows every metric it exports."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.support.promql import (
    PROMETHEUS_SERIES,
    dashboard_queries,
    dashboard_variable_metrics,
    exported_metrics,
    exported_sample_names,
    metric_names,
    substitute_grafana_variables,
)
from tests.support.tools import Tools, helm_template


@pytest.fixture(scope="module")
def exported() -> set[str]:
    metrics = exported_metrics()
    assert len(metrics) >= 14, f"metrics.py defines only {sorted(metrics)}"
    return exported_sample_names(metrics)


@pytest.fixture(scope="module")
def alert_rules(tools: Tools) -> list[dict]:
    objects = helm_template(tools, "metrics.prometheusRule.enabled=true")
    [rule] = [obj for obj in objects if obj["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def test_the_extractor_finds_metric_names_and_only_them() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(fedtask_round_duration_seconds_bucket'
            '{namespace=~"a|b", task!="x"}[5m] offset 1h))) / on (namespace) group_left (task) up > bool 0.5e3')
    assert metric_names(expr) == {"fedtask_round_duration_seconds_bucket", "up"}
    assert metric_names("fedtask_tasks{phase=\"Failed\"} and fedtask_no_such_thing") == {
        "fedtask_tasks", "fedtask_no_such_thing"}
    with pytest.raises(ValueError, match="unknown function"):
        metric_names("rate_of(fedtask_rounds_total[1m])")


def test_dashboard_queries_name_only_exported_metrics(exported: set[str]) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    for title, expr in queries.items():
        unknown = metric_names(substitute_grafana_variables(expr)) - exported - PROMETHEUS_SERIES
        assert not unknown, f"dashboard panel {title}: {sorted(unknown)} not exported by metrics.py"
    for name, (selector, _) in dashboard_variable_metrics().items():
        assert metric_names(substitute_grafana_variables(selector)) <= exported, f"variable ${name}"


def test_alert_expressions_name_only_exported_metrics(exported: set[str], alert_rules: list[dict]) -> None:
    alerts = {rule["alert"]: rule["expr"] for group in alert_rules for rule in group["rules"]}
    assert set(alerts) == {"FedtaskTaskFailed", "FedtaskRoundStalled", "FedtaskHighUpdateRejectionRate",
                           "FedtaskOperatorDown"}
    for alert, expr in alerts.items():
        unknown = metric_names(expr) - exported - PROMETHEUS_SERIES
        assert not unknown, f"alert {alert}: {sorted(unknown)} not exported by metrics.py"


def test_the_dashboard_shows_every_exported_metric() -> None:
    named = set().union(*(metric_names(substitute_grafana_variables(e)) for e in dashboard_queries().values()))
    for metric, kind in exported_metrics().items():
        samples = exported_sample_names({metric: kind})
        assert named & samples, f"no dashboard panel shows {metric}"


def test_every_expression_is_valid_promql(tools: Tools, alert_rules: list[dict], tmp_path) -> None:
    """promtool parses the alerts as they are and every dashboard query as a recording rule."""
    dashboard_group = {"name": "dashboard", "rules": [
        {"record": f"fedtask:dashboard_query:{number}", "expr": substitute_grafana_variables(expr)}
        for number, expr in enumerate(dashboard_queries().values())]}
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": alert_rules + [dashboard_group]}))
    result = subprocess.run([str(tools.promtool), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard_group['rules']) + 4} rules found" in result.stdout
