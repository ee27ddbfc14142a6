"""The chart's RBAC on the real API server: with `pods: create` removed from the operator's tasks ClusterRole, a task
does not progress and says why (the Stalled condition and a Warning event carry the API server's 403); with the rule
restored, the same task goes on and succeeds (the chart's rules are enough)."""
from __future__ import annotations

import json
import time

import pytest

from tests.cluster.conftest import NAMESPACE, LocalCluster
from tests.cluster.test_end_to_end import digits_task, wait_for_phase

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]


def tasks_role(cluster: LocalCluster) -> dict:
    roles = [role for role in cluster.get_json("clusterroles")["items"] if role["metadata"]["name"].endswith("-tasks")
             and role["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "Helm"]
    assert len(roles) == 1, [role["metadata"]["name"] for role in roles]
    return roles[0]


def replace(cluster: LocalCluster, role: dict) -> None:
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        role["metadata"].pop(key, None)
    cluster.kubectl("replace", "-f", "-", input=json.dumps(role))


def test_without_pods_create_the_task_stalls_with_the_403_and_resumes_once_restored(cluster: LocalCluster):
    original = tasks_role(cluster)
    crippled = json.loads(json.dumps(original))
    for rule in crippled["rules"]:
        if rule.get("apiGroups") == [""] and "pods" in rule.get("resources", []):
            rule["verbs"] = [verb for verb in rule["verbs"] if verb != "create"]
    assert crippled["rules"] != original["rules"], original["rules"]
    operator = [d for d in cluster.get_json("deployments", "-n", NAMESPACE)["items"]
                if "minio" not in d["metadata"]["name"]]
    sa = f"system:serviceaccount:{NAMESPACE}:" + operator[0]["spec"]["template"]["spec"]["serviceAccountName"]
    assert cluster.kubectl("auth", "can-i", "create", "pods", "-n", NAMESPACE, "--as", sa).stdout.strip() == "yes"

    name = "rbac-denied"
    replace(cluster, crippled)
    try:
        # The authorizer follows the role within moments.
        deadline = time.monotonic() + 30
        while cluster.kubectl("auth", "can-i", "create", "pods", "-n", NAMESPACE, "--as", sa,
                              check=False).stdout.strip() != "no":
            assert time.monotonic() < deadline, "the API server still allows pods: create"
            time.sleep(0.5)
        cluster.kubectl("apply", "-f", "-", input=digits_task(name, 2, {"count": 2, "perRound": 2}))
        deadline = time.monotonic() + 90
        stalled: dict = {}
        while time.monotonic() < deadline and not stalled:
            status = cluster.get_json("federatedtask", name, "-n", NAMESPACE).get("status") or {}
            stalled = next((c for c in status.get("conditions") or [] if c["type"] == "Stalled"
                            and c["status"] == "True" and c.get("reason") == "PodCreationFailed"), {})
            time.sleep(1)
        assert stalled, f"no Stalled/PodCreationFailed condition: {status}\n{cluster.logs()}"
        assert "forbidden" in stalled["message"] and "pods" in stalled["message"], stalled
        assert status.get("phase") not in ("Succeeded", "Failed"), status
        assert not cluster.get_json("pods", "-n", NAMESPACE, "-l", f"fedtask.io/task={name}")["items"]
        events = cluster.get_json("events", "-n", NAMESPACE, "--field-selector",
                                  f"involvedObject.name={name},reason=PodCreationFailed")["items"]
        assert events and events[0]["type"] == "Warning" and "forbidden" in events[0]["message"], events
    finally:
        replace(cluster, json.loads(json.dumps(original)))

    # Restored: the same task goes on (the creation backoff is at most 60 s) and succeeds.
    task = wait_for_phase(cluster, name, timeout=240)
    assert task["status"]["phase"] == "Succeeded", task["status"]
    assert [entry["round"] for entry in task["status"]["history"]] == [1, 2]
