"""End to end on a real control plane: the chart installed with Helm (operator and MinIO as pods on node agents),
tasks applied with kubectl, pods bound by kube-scheduler, the CRD enforced by kube-apiserver itself."""
from __future__ import annotations

import re
import subprocess
import time

import pytest
import yaml

from fedtask_operator.core.quantities import parse_quantity
from tests.cluster.conftest import NAMESPACE, ROOT, LocalCluster, PodRecorder

# The first test also sets the module's cluster up (and may wait for another session's): a longer timeout.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

PRINTER_COLUMNS = ["NAME", "PHASE", "ROUND", "STAGE", "ACCURACY", "AGE"]
SCHEDULED = re.compile(r"Successfully assigned (?P<namespace>[^/]+)/(?P<pod>\S+) to (?P<node>\S+)")


def digits_task(name: str, rounds: int, devices: dict) -> str:
    """A small copy of examples/digits-quick.yaml in namespace fedtask."""
    with open(ROOT / "examples" / "digits-quick.yaml") as handle:
        task = yaml.safe_load(handle)
    task["metadata"] = {"name": name, "namespace": NAMESPACE}
    task["spec"]["devices"] = devices
    task["spec"]["rounds"] = {"max": rounds}
    return yaml.safe_dump(task)


def wait_for_phase(cluster: LocalCluster, name: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    task: dict = {}
    while time.monotonic() < deadline:
        task = cluster.get_json("federatedtask", name, "-n", NAMESPACE)
        phase = (task.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return task
        time.sleep(1)
    describe = cluster.kubectl("describe", "federatedtask", name, "-n", NAMESPACE, check=False).stdout
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
    raise AssertionError(f"{name} still {task.get('status', {}).get('phase')} after {timeout}s\n{describe}\n{pods}\n"
                         f"{cluster.logs()}")


def scheduled_events(cluster: LocalCluster) -> dict[str, dict]:
    """pod name -> its Scheduled event (from kube-scheduler: reportingComponent default-scheduler)."""
    events = cluster.get_json("events", "-n", NAMESPACE, "--field-selector", "reason=Scheduled")["items"]
    return {event["involvedObject"]["name"]: event for event in events}


def train_pods(recorder: PodRecorder) -> dict[str, dict]:
    return {name: pod for name, pod in recorder.pods.items()
            if pod["metadata"]["labels"].get("fedtask.io/stage") == "train"}


def fits(pod: dict, node: dict) -> list[str]:
    """Why the node cannot hold the pod (empty: it fits): Ready, the pod's node affinity, allocatable >= requests."""
    problems = []
    conditions = {c["type"]: c["status"] for c in node["status"].get("conditions") or []}
    if conditions.get("Ready") != "True":
        problems.append("node not Ready")
    terms = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    for term in terms:
        for expression in term.get("matchExpressions") or []:
            value = node["metadata"]["labels"].get(expression["key"])
            if expression["operator"] == "In" and value not in expression["values"]:
                problems.append(f"affinity {expression['key']} in {expression['values']}, node has {value}")
    requests = pod["spec"]["containers"][0].get("resources", {}).get("requests") or {}
    for resource, quantity in requests.items():
        available = node["status"]["allocatable"].get(resource)
        if available is None or parse_quantity(available) < parse_quantity(quantity):
            problems.append(f"{resource}: requests {quantity}, node has {available}")
    return problems


def assert_bound_by_scheduler(cluster: LocalCluster, task: dict, pods: dict[str, dict]) -> dict[str, str]:
    """Every train pod of every round was bound by default-scheduler to a node that fits; returns pod -> node."""
    history = task["status"]["history"]
    name = task["metadata"]["name"]
    expected = {f"{name}-r{entry['round']:04d}-train-{device}" for entry in history for device in entry["devices"]}
    recorded = {re.sub(r"-a\d+$", "", pod) for pod in pods}
    assert expected <= recorded, f"train pods never seen: {sorted(expected - recorded)}"
    events = scheduled_events(cluster)
    nodes = {node["metadata"]["name"]: node for node in cluster.get_json("nodes")["items"]}
    placement = {}
    for pod_name, pod in pods.items():
        event = events.get(pod_name)
        assert event is not None, f"{pod_name}: no Scheduled event"
        assert event["reportingComponent"] == "default-scheduler", event
        match = SCHEDULED.match(event["message"])
        assert match and match["pod"] == pod_name, event["message"]
        assert pod["spec"]["nodeName"] == match["node"], (pod_name, pod["spec"]["nodeName"], event["message"])
        scheduled = [c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"]
        assert scheduled and scheduled[0]["status"] == "True", (pod_name, pod["status"].get("conditions"))
        assert fits(pod, nodes[match["node"]]) == [], (pod_name, match["node"], fits(pod, nodes[match["node"]]))
        placement[pod_name] = match["node"]
    return placement


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
