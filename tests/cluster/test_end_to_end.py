"""End to end on a real control plane: the chart installed with Helm (operator and MinIO as pods on node agents),
tasks applied with kubectl, pods bound by kube-scheduler, the CRD enforced by kube-apiserver itself."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.support.cluster import (
    NAMESPACE,
    LocalCluster,
    PodRecorder,
    assert_bound_by_scheduler,
    digits_task,
    train_pods,
    wait_for_phase,
)

# The first test also sets the module's cluster up (and may wait for another session's): a longer timeout.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

PRINTER_COLUMNS = ["NAME", "PHASE", "ROUND", "STAGE", "ACCURACY", "AGE"]


def test_a_bad_manifest_is_refused_by_the_api_server_naming_the_field(cluster: LocalCluster):
    bad_minimum = digits_task("bad-per-round", 2, {"count": 4, "perRound": 0})
    result = cluster.kubectl("apply", "-f", "-", input=bad_minimum, check=False)
    assert result.returncode != 0
    assert "spec.devices.perRound" in result.stderr and "greater than or equal to 1" in result.stderr, result.stderr

    # A CEL rule of the CRD, evaluated by the API server: a per-node claim name must contain {node}.
    task = yaml.safe_load(digits_task("bad-claim", 2, {"perRound": 1}))
    task["spec"]["data"].update({"source": "pvc", "claimName": "shared-claim"})
    result = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(task), check=False)
    assert result.returncode != 0
    assert "spec.data.claimName" in result.stderr and "{node}" in result.stderr, result.stderr

    listed = cluster.get_json("federatedtasks", "-n", NAMESPACE)["items"]
    assert not [t for t in listed if t["metadata"]["name"].startswith("bad-")]


def test_digits_task_succeeds_with_every_train_pod_bound_by_the_scheduler(cluster: LocalCluster):
    name = "digits-cluster"
    manifest = digits_task(name, 4, {"count": 6, "perRound": 3,
                                     "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}})
    with PodRecorder(cluster, name) as recorder:
        cluster.kubectl("apply", "-f", "-", input=manifest)
        task = wait_for_phase(cluster, name)
    assert task["status"]["phase"] == "Succeeded", task["status"]
    assert task["status"]["round"] == 4
    assert not recorder.errors, recorder.errors

    placement = assert_bound_by_scheduler(cluster, task, train_pods(recorder))
    assert len(placement) >= 4 * 3
    device_nodes = {n["metadata"]["name"] for n in cluster.get_json("nodes", "-l", "fedtask.io/device=true")["items"]}
    assert set(placement.values()) <= device_nodes

    table = cluster.kubectl("get", "ft", name, "-n", NAMESPACE).stdout.splitlines()
    assert table[0].split() == PRINTER_COLUMNS, table
    row = dict(zip(PRINTER_COLUMNS, table[1].split(), strict=True))
    assert (row["NAME"], row["PHASE"], row["ROUND"]) == (name, "Succeeded", "4"), row
    assert 0.0 < float(row["ACCURACY"]) <= 1.0, row
    described = cluster.kubectl("describe", "ft", name, "-n", NAMESPACE).stdout
    assert "RoundCompleted" in described and "round 4 completed" in described, described


def test_gpu_task_trains_only_on_the_gpu_node(cluster: LocalCluster):
    name = "digits-gpu"
    # Only a request, as the README's GPU example: the pods must get a limit too, or the API server refuses them.
    manifest = digits_task(name, 2, {"count": 2, "perRound": 1,
                                     "resources": {"requests": {"cpu": "100m", "nvidia.com/gpu": 1}}})
    with PodRecorder(cluster, name) as recorder:
        cluster.kubectl("apply", "-f", "-", input=manifest)
        task = wait_for_phase(cluster, name)
    assert task["status"]["phase"] == "Succeeded", task["status"]
    pods = train_pods(recorder)
    placement = assert_bound_by_scheduler(cluster, task, pods)
    gpu_nodes = {n["metadata"]["name"] for n in cluster.get_json("nodes")["items"]
                 if n["status"]["allocatable"].get("nvidia.com/gpu")}
    assert gpu_nodes == {"gpu-1"}
    assert set(placement.values()) == gpu_nodes, placement
    for pod in pods.values():
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1", resources


def test_helm_test_runs_a_tiny_task_with_the_hooks_own_rights(cluster: LocalCluster):
    # The chart's `helm test` hooks: the metrics check, and a one-round digits task applied by a Pod whose
    # ServiceAccount may only get/create/delete FederatedTasks in the release namespace.
    result = subprocess.run(["helm", "test", "fedtask", "-n", NAMESPACE, "--timeout", "6m"], capture_output=True,
                            text=True, env=cluster.env, timeout=420)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test-task" in result.stdout, result.stdout
    # the hook deleted its task, and (hook-succeeded) its Pod, ServiceAccount, Role and RoleBinding
    listed = cluster.get_json("federatedtasks", "-n", NAMESPACE)["items"]
    assert not [t for t in listed if t["metadata"]["name"].endswith("-helm-test")]
    assert not cluster.get_json("roles", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=test")["items"]
