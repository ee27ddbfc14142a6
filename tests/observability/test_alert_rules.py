"""The chart's alerts fire when they should and stay quiet otherwise: `promtool test rules` over series shaped like
the operator's (same names and labels as metrics.py exports; the names are checked in test_promql_names)."""
from __future__ import annotations

import subprocess

import yaml

from tests.support.tools import Tools, helm_template

LABELS = 'namespace="team-a", task="{task}"'


def series(name: str, values: str, **labels: str) -> dict:
    rendered = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def test_alerts_fire_on_failure_stall_rejections_and_operator_down(tools: Tools, tmp_path) -> None:
    [rule] = [obj for obj in helm_template(tools, "metrics.prometheusRule.enabled=true",
                                           "metrics.prometheusRule.roundStalledAfterSeconds=600")
              if obj["kind"] == "PrometheusRule"]
    groups = rule["spec"]["groups"]
    for alert in (alert for group in groups for alert in group["rules"]):
        del alert["annotations"]  # promtool compares annotations too; their templates are checked in test_promql_names
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    task = {"namespace": "team-a"}
    input_series = [
        # one failed task from minute 10 on
        series("fedtask_tasks", "0x9 1x30", phase="Failed", **task),
        # "stuck": a round in flight, round number frozen at 3; "moving": a new round every 5 minutes
        series("fedtask_devices_selected", "3x40", task="stuck", **task),
        series("fedtask_task_round", "3x40", task="stuck", **task),
        series("fedtask_devices_selected", "3x40", task="moving", **task),
        series("fedtask_task_round", "1x4 2x4 3x4 4x4 5x4 6x4 7x4 8x4", task="moving", **task),
        # "noisy": 5 updates arrive per round, 3 rejected; "clean": none rejected
        series("fedtask_rounds_total", "0+1x40", task="noisy", **task),
        series("fedtask_devices_returned", "5x40", task="noisy", **task),
        series("fedtask_updates_rejected_total", "0+3x40", task="noisy", **task),
        series("fedtask_rounds_total", "0+1x40", task="clean", **task),
        series("fedtask_devices_returned", "5x40", task="clean", **task),
        series("fedtask_updates_rejected_total", "0x40", task="clean", **task),
        # the operator's scrape target goes down at minute 20
        series("up", "1x19 0x20", job="ft-fedtask-metrics", namespace="fedtask"),
    ]
    alert_tests = [
        {"eval_time": "8m", "alertname": "FedtaskTaskFailed", "exp_alerts": []},
        {"eval_time": "12m", "alertname": "FedtaskTaskFailed",
         "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "team-a"}}]},
        {"eval_time": "10m", "alertname": "FedtaskRoundStalled", "exp_alerts": []},
        {"eval_time": "20m", "alertname": "FedtaskRoundStalled",
         "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "team-a", "task": "stuck"}}]},
        {"eval_time": "25m", "alertname": "FedtaskHighUpdateRejectionRate",  # 3 of 5: 60 % > 20 %
         "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "team-a", "task": "noisy"}}]},
        {"eval_time": "15m", "alertname": "FedtaskOperatorDown", "exp_alerts": []},
        {"eval_time": "30m", "alertname": "FedtaskOperatorDown",
         "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},  # absent(...) of a comparison keeps no labels
    ]
    tests_file = tmp_path / "alert-tests.yaml"
    tests_file.write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": alert_tests}],
    }))
    result = subprocess.run([str(tools.promtool), "test", "rules", str(tests_file)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
