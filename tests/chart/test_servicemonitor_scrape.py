"""The chart's ServiceMonitor as the Prometheus Operator turns it into a scrape job, scraped by a real Prometheus.

The operator's metrics carry the task's `namespace` label. A ServiceMonitor's scrape job gets target labels from its
Kubernetes service discovery (`namespace`, `service`, `pod`, `container`, `endpoint`, `job`, the operator's own). Unless
the endpoint has `honorLabels: true`, Prometheus keeps the target's `namespace` and renames the scraped one to
`exported_namespace`: the dashboard's namespace variable, the alerts' `kubectl -n` hints and same-named tasks in two
namespaces would all go wrong. A static scrape config cannot show this; this test builds the job the Prometheus
Operator generates for the rendered endpoint and lets Prometheus apply it to a scraped sample.
"""
from __future__ import annotations

import copy
import http.server
import json
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.s3 import free_port
from tests.support.tools import Tools, helm_template
from tests.support.waiting import wait_for

OPERATOR_NAMESPACE = "fedtask"
SAMPLE = ('# TYPE fedtask_task_round gauge\n'
          'fedtask_task_round{namespace="team-a",task="mnist"} 3\n'
          'fedtask_task_round{namespace="team-b",task="mnist"} 7\n')


def operator_scrape_config(monitor: dict, index: int, target: str) -> dict:
    """The scrape job the Prometheus Operator generates for `monitor`'s endpoint `index`, with the target labels its
    Kubernetes service-discovery relabelling gives a pod of the selected Service (as static labels: no cluster here).
    Only what the endpoint sets is read; any field this function does not know fails the test."""
    endpoint = monitor["spec"]["endpoints"][index]
    known = {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
    assert set(endpoint) <= known, f"translate {set(endpoint) - known} too"
    namespace, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    service = f"{name}-metrics"
    return {
        "job_name": f"serviceMonitor/{namespace}/{name}/{index}",
        "honor_labels": endpoint.get("honorLabels", False),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": "200ms",
        "static_configs": [{"targets": [target], "labels": {
            "namespace": namespace, "service": service, "pod": f"{name}-7d9c-abcde", "container": "operator",
            "endpoint": endpoint["port"], "job": service}}],
    }


class _Exporter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = SAMPLE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def scraped_series(tools: Tools, tmp_path: Path, job: dict) -> list[dict]:
    """The label sets of `fedtask_task_round` once a real Prometheus has scraped the exporter with `job`."""
    prometheus_port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": [job]}))
    log = open(tmp_path / "prometheus.log", "wb")
    process = subprocess.Popen([str(tools.prometheus), f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": "fedtask_task_round"})

    def series() -> list[dict]:
        if process.poll() is not None:
            raise AssertionError((tmp_path / "prometheus.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return [item["metric"] for item in json.loads(response.read())["data"]["result"]]
        except OSError:
            return []

    try:
        return wait_for(lambda: both if len(both := series()) == 2 else [], timeout=60,
                        message="Prometheus to scrape both series")
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def exporter_target():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def monitor(tools: Tools) -> dict:
    [found] = [obj for obj in helm_template(tools, "metrics.serviceMonitor.enabled=true", namespace=OPERATOR_NAMESPACE)
               if obj["kind"] == "ServiceMonitor"]
    return found


def test_the_chart_servicemonitor_keeps_the_tasks_namespace(tools: Tools, monitor: dict, exporter_target: str,
                                                              tmp_path: Path) -> None:
    series = scraped_series(tools, tmp_path, operator_scrape_config(monitor, 0, exporter_target))

    assert sorted(s["namespace"] for s in series) == ["team-a", "team-b"]
    assert not any("exported_namespace" in s for s in series)
    assert {s["job"] for s in series} == {"ft-fedtask-metrics"}  # the target's other labels are still there


def test_without_honor_labels_the_namespace_becomes_the_operators(tools: Tools, monitor: dict, exporter_target: str,
                                                                   tmp_path: Path) -> None:
    # the control: what the Prometheus Operator did with the chart's ServiceMonitor before honorLabels
    plain = copy.deepcopy(monitor)
    plain["spec"]["endpoints"][0].pop("honorLabels")
    series = scraped_series(tools, tmp_path, operator_scrape_config(plain, 0, exporter_target))

    assert {s["namespace"] for s in series} == {OPERATOR_NAMESPACE}
    assert sorted(s["exported_namespace"] for s in series) == ["team-a", "team-b"]
