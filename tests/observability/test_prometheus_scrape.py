"""A real Prometheus (Debian's package) scrapes a real process exporting the operator's metrics while a real local
run trains a task (with one failed and retried pod); every dashboard query then returns data, and Prometheus loads
the chart's alert rules."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.promql import (
    GRAFANA_VARIABLES,
    dashboard_queries,
    dashboard_variable_metrics,
    substitute_grafana_variables,
)
from tests.support.s3 import free_port
from tests.support.tools import REPO, Tools, helm_template
from tests.support.waiting import wait_for

HERE = Path(__file__).parent
SCRAPE_INTERVAL = "250ms"  # several scrapes per round: rounds of this tiny task take about a second
RUN_TIMEOUT = 240.0
TASK = {
    "apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
    "metadata": {"name": "digits-observed", "namespace": "team-a"},
    "spec": {
        "model": {"name": "flaky_model:build"},  # its first build fails: a real failed pod, retried
        "data": {"dataset": "digits", "partition": {"scheme": "classes", "classesPerDevice": 2},
                 "shared": {"fraction": 0.05}},
        "devices": {"count": 4, "perRound": 3, "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}},
        "training": {"localEpochs": 1, "batchSize": 16},
        "adjustment": {"enabled": True, "epochs": 1},
        "rounds": {"max": 5},
        "podRetryLimit": 2,
    },
}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_until(predicate, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    """`wait_for` a predicate that may fail to connect (OSError) while `process` runs; its log tail on failure."""
    def holds() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            return bool(predicate())
        except OSError:
            return False

    try:
        wait_for(holds, timeout=timeout, interval=0.2, message=what)
    except AssertionError as error:
        if process.poll() is not None:
            raise  # it says so, with the log
        raise AssertionError(f"{error}:\n{log.read_text()[-4000:]}") from None


class Process:
    """A subprocess with its output in a file; terminated (then killed) on exit."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._file = open(log, "wb")
        self.popen = subprocess.Popen(args, stdout=self._file, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self._file.close()


@pytest.fixture(scope="module")
def observed_run(tools: Tools, tmp_path_factory: pytest.TempPathFactory):
    """(prometheus base URL, run start, run end): Prometheus has scraped the exporter through a whole run."""
    tmp_path = tmp_path_factory.mktemp("observed-run")
    manifest = tmp_path / "task.yaml"
    manifest.write_text(yaml.safe_dump(TASK))
    [rule] = [obj for obj in helm_template(tools, "metrics.prometheusRule.enabled=true")
              if obj["kind"] == "PrometheusRule"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    exporter_port, prometheus_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(tmp_path / "rules.yaml")],
        # the job name the chart's metrics Service gives (release "fedtask"): the dashboard matches it
        "scrape_configs": [{"job_name": "fedtask-metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    prometheus = Process([str(tools.prometheus), f"--config.file={tmp_path / 'prometheus.yml'}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
                         tmp_path / "prometheus.log")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)]),
               FEDTASK_TEST_FLAKY_MARKER=str(tmp_path / "flaky-marker"))
    base = f"http://127.0.0.1:{prometheus_port}"
    exporter = None
    try:
        # Prometheus scrapes from before the first round: rates need a sample before each increase.
        wait_until(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 60,
                   "Prometheus to be ready", prometheus.popen, prometheus.log)
        started = time.time()
        exporter = Process([sys.executable, str(HERE / "local_run_exporter.py"), f"--port={exporter_port}",
                            f"--workdir={tmp_path / 'run'}", str(manifest)], tmp_path / "exporter.log", env=env)
        wait_until(lambda: "run finished" in exporter.log.read_text(), RUN_TIMEOUT, "the local run to finish",
                   exporter.popen, exporter.log)
        assert "run finished: exit 0" in exporter.log.read_text(), exporter.log.read_text()[-4000:]
        time.sleep(3)  # a few scrapes of the final values
        yield base, started, time.time()
    finally:
        if exporter is not None:
            exporter.stop()
        prometheus.stop()


# Grafana's $__rate_interval is at least four scrape intervals
RATE_INTERVAL = {**GRAFANA_VARIABLES, "$__rate_interval": "2s"}


def query_range(base: str, expr: str, start: float, end: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "0.25"})
    answer = get_json(f"{base}/api/v1/query_range?{params}")
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_every_dashboard_query_returns_data_from_a_scraped_run(observed_run) -> None:
    base, start, end = observed_run
    targets = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    empty = {}
    for title, expr in dashboard_queries().items():
        series = query_range(base, substitute_grafana_variables(expr, RATE_INTERVAL), start, end)
        values = [float(value) for s in series for _, value in s["values"]]
        if not any(math.isfinite(value) for value in values):
            empty[title] = {"expr": expr, "result": series[:3]}
    assert not empty, f"dashboard queries without data: {json.dumps(empty, indent=1)}"
    for variable, (selector, label) in dashboard_variable_metrics().items():
        series = query_range(base, substitute_grafana_variables(selector), start, end)
        assert {s["metric"].get(label) for s in series} >= {TASK["metadata"][label if label != "task" else "name"]}, (
            f"${variable}")


def test_the_run_is_what_the_dashboard_shows(observed_run) -> None:
    base, start, end = observed_run

    def last(expr: str) -> float:
        [series] = query_range(base, expr, end - 2, end)
        return float(series["values"][-1][1])

    labels = 'namespace="team-a", task="digits-observed"'
    assert last(f"fedtask_task_round{{{labels}}}") == 5
    assert last(f"fedtask_rounds_total{{{labels}}}") == 5
    assert last(f'fedtask_pod_failures_total{{{labels}, stage="init"}}') == 1
    assert last('fedtask_tasks{namespace="team-a", phase="Succeeded"}') == 1
    assert 0 < last(f"fedtask_task_accuracy{{{labels}}}") <= 1
    assert last(f"max(fedtask_device_train_seconds{{{labels}}})") > 0


def test_prometheus_loads_and_evaluates_the_chart_alert_rules(observed_run) -> None:
    base, _, _ = observed_run
    groups = get_json(f"{base}/api/v1/rules")["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {"FedtaskTaskFailed", "FedtaskRoundStalled", "FedtaskHighUpdateRejectionRate",
                          "FedtaskOperatorDown"}
    assert all(rule["health"] == "ok" for rule in rules.values()), rules
    # The task succeeded with no rejected update and the exporter was up: nothing fires. (OperatorDown matches the
    # chart's job and namespace labels, which a Prometheus Operator adds and this static config does not.)
    firing = [name for name, rule in rules.items() if rule["state"] == "firing" and name != "FedtaskOperatorDown"]
    assert not firing
