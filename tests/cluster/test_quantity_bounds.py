"""Issue 12 on the real API server: the CRD's bounded quantity pattern refuses a request no scheduler can read
(`cpu: "-1"`, 5000 digits; the integers -1 and 10^19, bounded by the int-or-string's minimum and maximum) naming
the field, and still takes ordinary quantities (server-side dry run: nothing is
stored, so the operator never sees these tasks)."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.support.cluster import NAMESPACE, ROOT, LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]


def task_with(name: str, requests: dict) -> str:
    with open(ROOT / "examples" / "digits-quick.yaml") as handle:
        task = yaml.safe_load(handle)
    task["metadata"] = {"name": name, "namespace": NAMESPACE}
    task["spec"]["devices"] = {"count": 2, "perRound": 1, "resources": {"requests": requests}}
    return json.dumps(task)  # JSON: a YAML dump would leave 1e99 unquoted, and Go's YAML reads it as a number


@pytest.mark.parametrize("value", ["-1", "-500m", "1" * 5000, "9" * 31 + "Gi", -1, 10 ** 19])
def test_the_api_server_refuses_an_unreadable_request_naming_the_field(cluster: LocalCluster, value: str):
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=task_with("bad-quantity", {"cpu": value}),
                             check=False)
    assert result.returncode != 0, result.stdout
    assert "spec.devices.resources.requests.cpu" in result.stderr, result.stderr


@pytest.mark.parametrize("value", ["500m", "2", "1.5", "1e3", "+1", "1e99", 2, 10 ** 18])
def test_the_api_server_takes_ordinary_quantities(cluster: LocalCluster, value: str):
    """`1e99` passes the pattern: the scheduler rejects that task alone (test_scheduling, test_planner)."""
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=task_with("ok-quantity", {"cpu": value}),
                             check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("where", ["devices", "server"])
def test_the_api_server_names_the_extended_resource_whose_limit_differs(cluster: LocalCluster, where: str):
    """Issue 15: the CRD's messageExpression names the resource (the API server evaluates it, not the Python copy)."""
    task = json.loads(task_with("gpu-conflict", {"cpu": 1}))
    task["spec"][where] = {**task["spec"].get(where, {}), "resources": {
        "requests": {"nvidia.com/gpu": 1, "hugepages-2Mi": "64Mi", "cpu": 1},
        "limits": {"nvidia.com/gpu": 2, "hugepages-2Mi": "64Mi", "cpu": 2}}}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(task), check=False)
    assert result.returncode != 0, result.stdout
    [line] = [line for line in result.stderr.splitlines() if f"spec.{where}.resources.limits" in line]
    assert "the limit of nvidia.com/gpu differs from its request: an extended resource" in line, result.stderr
