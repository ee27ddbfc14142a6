"""The RBAC rules (deploy/rbac/rules.yaml) grant every API call the real operator makes, and nothing it never makes.

The calls are recorded by the API emulator while the operator (namespace-scoped, with peering) runs a task to the
end and deletes it itself once its spec.ttlSecondsAfterFinished has passed. Calls of the tests' own clients (the
kubelet, the fixtures) carry their own user agent.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.support.kube import FEDERATEDTASKS, make_node
from tests.support.operator import DEVICE, OperatorProcess, digits_task
from tests.support.rbac import REPO, RULES, granted, recorded_calls
from tests.support.waiting import wait_for

pytestmark = pytest.mark.api

GENERATOR = REPO / "hack" / "generate-rbac.py"  # rules.yaml -> the deployable manifests
CLUSTERWIDE_ONLY = {("kopf.dev", "clusterkopfpeerings")}  # exercised by the cluster-wide variant only
# made with --leader-election (the chart's default), which replaces peering: tests/api/test_leader_failover.py records
# them and checks that these rules grant them
LEADER_ELECTION_ONLY = {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "patch")}
# checked by an admission plugin, not called: OwnerReferencesPermissionEnforcement lets a pod whose owner reference
# has blockOwnerDeletion be created only by who may update the owner's finalizers (tests/cluster runs it for real)
ADMISSION_ONLY = {("fedtask.io", "federatedtasks/finalizers", "update")}
# --namespace-credentials only (the operator's Secret of a namespace's store keys): it needs MinIO's admin API, which
# moto does not have; tests/cluster runs it for real with the chart's RBAC and MinIO
NAMESPACE_CREDENTIALS_ONLY = {("", "secrets", "get"), ("", "secrets", "create"), ("", "secrets", "delete")}


def test_the_role_grants_exactly_the_calls_the_operator_makes(cluster, s3_server, store_bucket, kubelet, tmp_path):
    rules = yaml.safe_load(RULES.read_text())
    cluster_rules, task_rules = granted(rules["cluster"]), granted(rules["tasks"])
    cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                   "metadata": {"name": "fedtask", "namespace": "default"}})
    cluster.apply(make_node("node-a", labels=DEVICE))
    with OperatorProcess(cluster, s3_server, tmp_path / "operator.log", "--peering=fedtask", "--priority=10"):
        cluster.apply(digits_task("rbac", rounds=1, ttlSecondsAfterFinished=1))
        # one wait, for the delete: with a 1 s ttl (and completionTime's second precision) the finished task may be
        # gone within a second, before a separate wait for "finished" has seen it (the ttl test's race)
        wait_for(lambda: cluster.get(FEDERATEDTASKS, "default", "rbac") is None, timeout=150,
                 message="the task to finish and the operator to delete it after its ttl")
    assert any((version.get("status") or {}).get("phase") == "Succeeded" for version in cluster.history(FEDERATEDTASKS)
               if version["metadata"]["name"] == "rbac"), "the task was deleted without having succeeded"

    calls = recorded_calls(cluster)
    denied = sorted(call for call in calls
                    if call[:3] not in cluster_rules and (call[3] or call[:3] not in task_rules))
    assert not denied, f"calls the role does not grant (group, resource, verb, cluster-wide): {denied}"
    used = {call[:3] for call in calls} | LEADER_ELECTION_ONLY
    unused = sorted(rule for rule in cluster_rules | task_rules
                    if rule not in used and rule[:2] not in CLUSTERWIDE_ONLY and rule not in ADMISSION_ONLY
                  and rule not in NAMESPACE_CREDENTIALS_ONLY)
    assert not unused, f"granted but never called: {unused}"


@pytest.mark.parametrize("manifest", ["cluster-wide.yaml", "namespaced.yaml"])
def test_the_deployable_manifests_carry_exactly_the_rules(manifest):
    rules = yaml.safe_load(RULES.read_text())
    documents = list(yaml.safe_load_all((RULES.parent / manifest).read_text()))
    roles = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] in ("ClusterRole", "Role")}
    assert roles["fedtask-operator-cluster"]["kind"] == "ClusterRole"
    assert roles["fedtask-operator-cluster"]["rules"] == rules["cluster"]
    assert roles["fedtask-operator-tasks"]["rules"] == rules["tasks"]
    expected_kind = "ClusterRole" if manifest == "cluster-wide.yaml" else "Role"
    assert roles["fedtask-operator-tasks"]["kind"] == expected_kind
    bindings = [doc for doc in documents if doc["kind"].endswith("Binding")]
    assert {binding["roleRef"]["name"] for binding in bindings} == set(roles)
    secret_rules = [rule for doc in roles.values() for rule in doc["rules"] if "secrets" in rule["resources"]]
    assert secret_rules == [  # the operator's own Secret by name, and create; no list, watch or update
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["fedtask-store-credentials"],
         "verbs": ["get", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]


def test_the_deployable_manifests_are_generated_from_the_rules():
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"stale RBAC manifests, run hack/generate-rbac.py:\n{result.stderr}"
