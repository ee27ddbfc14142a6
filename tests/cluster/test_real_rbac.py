"""The chart's RBAC on the real API server: with `pods: create` removed from the operator's tasks ClusterRole, a task
does not progress and says why (the Stalled condition and a Warning event carry the API server's 403); with the rule
restored, the same task goes on and succeeds (the chart's rules are enough)."""
from __future__ import annotations

import json

import pytest

from tests.support.cluster import NAMESPACE, LocalCluster, digits_task, operator_deployment, wait_for_phase
from tests.support.waiting import wait_for

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
    operator = operator_deployment(cluster)
    sa = f"system:serviceaccount:{NAMESPACE}:" + operator["spec"]["template"]["spec"]["serviceAccountName"]
    assert cluster.kubectl("auth", "can-i", "create", "pods", "-n", NAMESPACE, "--as", sa).stdout.strip() == "yes"

    name = "rbac-denied"
    replace(cluster, crippled)
    try:
        # The authorizer follows the role within moments.
        wait_for(lambda: cluster.kubectl("auth", "can-i", "create", "pods", "-n", NAMESPACE, "--as", sa,
                                         check=False).stdout.strip() == "no",
                 timeout=30, interval=0.5, message="the API server to refuse pods: create")
        cluster.kubectl("apply", "-f", "-", input=digits_task(name, 2, {"count": 2, "perRound": 2}))
        seen: dict = {}

        def stalled_condition() -> dict:
            seen["status"] = cluster.get_json("federatedtask", name, "-n", NAMESPACE).get("status") or {}
            return next((c for c in seen["status"].get("conditions") or [] if c["type"] == "Stalled"
                         and c["status"] == "True" and c.get("reason") == "PodCreationFailed"), {})

        try:
            stalled = wait_for(stalled_condition, timeout=90, interval=1,
                               message="a Stalled/PodCreationFailed condition")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}: {seen.get('status')}\n{cluster.logs()}") from None
        status = seen["status"]
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
