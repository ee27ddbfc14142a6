"""The Grafana dashboard has every panel issue 6 asks for, laid out on Grafana's 24-column grid, every query on the
dashboard's Prometheus data source variable and filtered by the namespace/task variables."""
from __future__ import annotations

import json

from tests.support.promql import DASHBOARD

REQUIRED_PANELS = {  # title -> panel type
    "Rounds completed": "timeseries", "Current round": "timeseries", "Accuracy": "timeseries", "Loss": "timeseries",
    "Round duration by stage (p50 / p95)": "timeseries", "Devices selected vs returned": "timeseries",
    "Stragglers": "timeseries", "Rejected updates": "timeseries", "Per-device train time": "heatmap",
    "Tasks by phase": "stat", "Operator up": "stat",
}


def test_dashboard_has_the_required_panels_on_a_valid_grid() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert {p["title"]: p["type"] for p in panels if p["title"] in REQUIRED_PANELS} == REQUIRED_PANELS
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    quantiles = [t["expr"] for p in panels if p["title"].startswith("Round duration") for t in p["targets"]]
    assert any("histogram_quantile(0.5," in e for e in quantiles) and any("histogram_quantile(0.95," in e
                                                                             for e in quantiles)


def test_every_query_uses_the_datasource_variable_and_the_task_filters() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "task"} <= variables
    for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], f"{panel['title']}: no description"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            expr = target["expr"]
            per_task = "fedtask_tasks" not in expr and "fedtask_scheduling" not in expr and "up{" not in expr
            if per_task:
                assert 'namespace=~"$namespace"' in expr and 'task=~"$task"' in expr, f"{panel['title']}: {expr}"
