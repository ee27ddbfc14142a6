"""Issue 12 on the real API server: the CRD's bounded quantity pattern refuses a request no scheduler can read
(`cpu: "-1"`, 5000 digits) naming the field, and still takes ordinary quantities (server-side dry run: nothing is
stored, so the operator never sees these tasks)."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.cluster.conftest import NAMESPACE, ROOT, LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]


def task_with(name: str, requests: dict) -> str:
    with open(ROOT / "examples" / "digits-quick.yaml") as handle:
        task = yaml.safe_load(handle)
    task["metadata"] = {"name": name, "namespace": NAMESPACE}
    task["spec"]["devices"] = {"count": 2, "perRound": 1, "resources": {"requests": requests}}
    return json.dumps(task)  # JSON: a YAML dump would leave 1e99 unquoted, and Go's YAML reads it as a number


@pytest.mark.parametrize("value", ["-1", "-500m", "1" * 5000, "9" * 31 + "Gi"])
def test_the_api_server_refuses_an_unreadable_request_naming_the_field(cluster: LocalCluster, value: str):
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=task_with("bad-quantity", {"cpu": value}),
                             check=False)
    assert result.returncode != 0, result.stdout
    assert "spec.devices.resources.requests.cpu" in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["500m", "2", "1.5", "1e3", "+1", "1e99"])
def test_the_api_server_takes_ordinary_quantities(cluster: LocalCluster, value: str):
    """`1e99` passes the pattern: the scheduler rejects that task alone (test_scheduling, test_planner)."""
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=task_with("ok-quantity", {"cpu": value}),
                             check=False)
    assert result.returncode == 0, result.stderr
