"""Lost nodes on the real control plane. A fleet of one infrastructure node (the operator, the server-side pods) and
five device nodes, each a node agent; in the middle of round 2 one device node's agent is killed (SIGKILL of the
agent, PID 1 of its PID namespace: the node's pod processes die with it, nothing reports for the node any more):
- NotReady: kube-controller-manager's node lifecycle controller (the real one, its default
  --node-monitor-grace-period) turns the node's Ready condition Unknown once its Lease goes stale; the task's
  spec.nodeLostGraceSeconds (5 s here) later the operator gives the pod up with a NodeLost event, a device on another
  node replaces it, and the task completes with every round exactly once. In the same round the other two devices'
  update objects are corrupted in MinIO (through the minio client) before aggregation: one truncated, one with a
  single bit flipped (its values still finite). The aggregator rejects both (UpdateRejected events naming each device:
  "truncated", "digest mismatch") and the round goes on with the replacement's update.
- Deleted: the agent is killed and the Node deleted (`kubectl delete node`, as a cloud's node controller does for a
  machine that is gone): the pod is given up at once (nodeLostGraceSeconds is 600 s here, so waiting for a NotReady
  grace would time the test out), replaced on another node, and the task completes with every round exactly once.
- Deleted while its agent keeps running (an admin's `kubectl delete node` of a live machine): the agent, like a
  kubelet (kubernetes/kubernetes#71398: a kubelet does not register its Node again once registered), keeps running
  its pods and renewing its Lease, its status updates now failing with 404. The operator gives the pod up at once
  all the same, the pod object goes (deleted by the operator and finished by the agent, or by kube-controller-manager's
  pod GC, which removes pods bound to a node that no longer exists), the victim's device is excluded from the round,
  and the task completes with every round exactly once. The fleet has six device nodes so that this third test still
  finds three after the first two have each lost one (and MinIO may take one).
"""
from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import (
    LOCK_SECONDS,
    NAMESPACE,
    CreationRecorder,
    LocalCluster,
    digits_task,
    machine_lock,
    minio_deployment,
    minio_pods,
    operator_pods,
    read_env,
    run_script,
    store_credentials,
    wait_for_phase,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

INFRA = "infra-1"
DEVICE_NODES = [f"dev-{number}" for number in range(1, 7)]
DEVICE_LABEL = "fedtask.io/device"
ROLE_LABEL = "role"  # infra-1 carries role=infra: the chart's nodeSelector and the tasks' spec.server.nodeSelector


def memory_ki() -> int:
    with open("/proc/meminfo") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))


def fleet() -> dict:
    """The nodes file (`kubectl get nodes -o yaml` form): infra-1 without the device label, five device nodes."""
    capacity = {"cpu": str(os.cpu_count()), "memory": f"{memory_ki()}Ki", "pods": "110"}

    def node(name: str, labels: dict) -> dict:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                "status": {"capacity": capacity, "allocatable": capacity}}

    return {"apiVersion": "v1", "kind": "List",
            "items": [node(INFRA, {ROLE_LABEL: "infra"})] + [node(name, {DEVICE_LABEL: "true"})
                                                             for name in DEVICE_NODES]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> LocalCluster:
    """The module's own cluster (conftest's, with the fleet above and the operator pinned to infra-1). The chart's
    MinIO has no nodeSelector: the device node it lands on loses its device label, so no train pod shares a node with
    the store or the operator."""
    nodes_file = tmp_path_factory.mktemp("fleet") / "nodes.yaml"
    nodes_file.write_text(yaml.safe_dump(fleet()))
    directory = tmp_path_factory.mktemp("cluster")
    with machine_lock(timeout=LOCK_SECONDS):
        try:
            timings = {"up": run_script("up", "--nodes", str(nodes_file), "--dir", str(directory), timeout=900)}
            timings["install"] = run_script("install", "--dir", str(directory),
                                            "--set", f"nodeSelector.{ROLE_LABEL}=infra", timeout=600)
            local = LocalCluster(dir=directory, env=read_env(directory / "env"), timings=timings)
            assert {p["spec"].get("nodeName") for p in operator_pods(local)} == {INFRA}
            for pod in minio_pods(local, minio_deployment(local)):
                if pod["spec"].get("nodeName") in DEVICE_NODES:
                    local.kubectl("label", "node", pod["spec"]["nodeName"], f"{DEVICE_LABEL}-")
            yield local
        finally:
            run_script("down", "--dir", str(directory), timeout=120)


def lost_node_task(name: str, grace: int, epochs: int = 20, per_round: int = 2) -> str:
    """Three rounds of digits on `per_round` of 4 devices, all needed (minReturned: a lost device must be replaced).
    Each train pod requests 60% of a node's memory, so no two share a node (the operator's scheduler and kube-scheduler
    both count requests; nothing enforces them here); the server-side pods stay on infra-1."""
    task = yaml.safe_load(digits_task(name, 3, {
        "count": 4, "perRound": per_round, "minReturned": per_round,
        "resources": {"requests": {"cpu": "100m", "memory": f"{int(memory_ki() * 0.6)}Ki"}}}))
    task["spec"]["nodeLostGraceSeconds"] = grace
    task["spec"]["training"]["localEpochs"] = epochs  # seconds of training: the pod still runs at the kill
    task["spec"]["server"] = {"nodeSelector": {ROLE_LABEL: "infra"}}
    return yaml.safe_dump(task)


def kill_node_agent(cluster: LocalCluster, node: str) -> None:
    """SIGKILL the node agent (PID 1 of its PID namespace, the child of the `unshare` local-cluster.sh started): the
    kernel kills every process of the namespace, the node's pods included."""
    pid = int((cluster.dir / "pids" / f"node-{node}").read_text())
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children, f"node agent {node}: unshare ({pid}) has no child"
    os.kill(int(children[0]), signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{children[0]}").exists()
             or Path(f"/proc/{children[0]}/stat").read_text().split()[2] == "Z", timeout=10,
             message=f"the agent of {node} dead")


def agent_alive(cluster: LocalCluster, node: str) -> bool:
    """The node agent (the child of the `unshare` local-cluster.sh started) still runs."""
    pid = int((cluster.dir / "pids" / f"node-{node}").read_text())
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return bool(children) and Path(f"/proc/{children[0]}/stat").read_text().split()[2] != "Z"


def round_train_pods(recorder: CreationRecorder, round_: int) -> dict[str, dict]:
    """The round's train pods already bound to a node."""
    return {name: pod for name, pod in recorder.pods.items()
            if pod["metadata"]["labels"].get("fedtask.io/stage") == "train"
            and pod["metadata"]["labels"].get("fedtask.io/round") == str(round_) and pod["spec"].get("nodeName")}


def events_of(cluster: LocalCluster, name: str, reason: str) -> list[dict]:
    items = cluster.get_json("events", "-n", NAMESPACE, "--field-selector",
                             f"involvedObject.name={name},reason={reason}")["items"]
    return items


def ready_condition(cluster: LocalCluster, node: str) -> dict:
    conditions = cluster.get_json("node", node)["status"].get("conditions") or []
    return next(c for c in conditions if c["type"] == "Ready")


def diagnosis(cluster: LocalCluster, task: dict) -> str:
    """What a failed task's round saw: its status' devices and assignment, the nodes, the pods, the operator's log."""
    status = task["status"]
    lines = [f"message: {status.get('message')}", f"devices: {status.get('devices')}",
             f"assignment: {status.get('assignment')}",
             cluster.kubectl("get", "nodes", "-o", "wide", check=False).stdout,
             cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout]
    for pod in operator_pods(cluster):
        for path in (cluster.dir / "nodes").glob(f"*/pods/{NAMESPACE}/{pod['metadata']['name']}*/**/*"):
            if path.is_file():
                lines.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-150:]))
    return "\n".join(lines)


def assert_every_round_once(cluster: LocalCluster, task: dict, recorder: CreationRecorder, rounds: int = 3) -> None:
    assert task["status"]["phase"] == "Succeeded", diagnosis(cluster, task)
    assert [entry["round"] for entry in task["status"]["history"]] == list(range(1, rounds + 1)), task["status"]
    assert not recorder.errors, recorder.errors
    twice = {pod: uids for pod, uids in recorder.uids.items() if len(uids) > 1}
    assert not twice, f"pod names created twice: {twice}"
    aggregates = sorted(n for n, p in recorder.pods.items() if p["metadata"]["labels"].get("fedtask.io/stage")
                        == "aggregate")
    assert [n.split("-r")[-1][:4] for n in aggregates] == [f"{r:04d}" for r in range(1, rounds + 1)], aggregates


def start_round_two(cluster: LocalCluster, recorder: CreationRecorder, manifest: str, count: int = 2) -> tuple:
    """Apply the task and wait for round 2's `count` train pods on as many device nodes: (victim, *survivors)."""
    cluster.kubectl("apply", "-f", "-", input=manifest)
    def bound() -> dict[str, dict] | None:
        found = round_train_pods(recorder, 2)
        return found if len(found) == count else None

    pods = wait_for(bound, timeout=300, interval=0.1, message=f"round 2's {count} train pods bound")
    ordered = sorted(pods.values(), key=lambda p: p["metadata"]["name"])
    nodes = [pod["spec"]["nodeName"] for pod in ordered]
    assert len(set(nodes)) == count, f"two train pods on one node: {nodes}"
    assert set(nodes) <= set(DEVICE_NODES)
    return tuple(ordered)


def test_a_node_turning_notready_mid_round_loses_its_pod_after_the_grace_and_a_corrupt_update_is_rejected(
        cluster: LocalCluster):
    name, grace = "node-notready", 5
    with CreationRecorder(cluster, name) as recorder:
        victim, survivor, flipped = start_round_two(cluster, recorder, lost_node_task(name, grace, per_round=3), 3)
        node = victim["spec"]["nodeName"]
        killed = time.monotonic()
        kill_node_agent(cluster, node)

        # The survivors' updates are corrupted in the store while the round waits for the lost device's replacement:
        # one truncated, one with a single bit flipped.
        task_uid = cluster.get_json("ft", name, "-n", NAMESPACE)["metadata"]["uid"]
        survivor_device = survivor["metadata"]["labels"]["fedtask.io/device"]
        flipped_device = flipped["metadata"]["labels"]["fedtask.io/device"]
        bucket, key = wait_for(lambda: update_object(cluster, task_uid, 2, survivor_device), timeout=120,
                               interval=0.2, message=f"{survivor_device}'s round 2 update in the store")
        original = truncate_object(cluster, bucket, key)
        bucket, key = wait_for(lambda: update_object(cluster, task_uid, 2, flipped_device), timeout=120,
                               interval=0.2, message=f"{flipped_device}'s round 2 update in the store")
        flip_position = flip_bit_of_object(cluster, bucket, key)
        assert round_status(cluster, name) == (2, "Training"), "an update was corrupted after aggregation began"

        def not_ready_condition() -> dict | None:
            condition = ready_condition(cluster, node)
            return condition if condition["status"] != "True" else None

        unknown = wait_for(not_ready_condition, timeout=180, interval=0.5,
                           message=f"{node} NotReady (the node lifecycle controller)")
        not_ready = time.monotonic()
        lost = wait_for(lambda: events_of(cluster, name, "NodeLost"), timeout=120, interval=0.2,
                        message="a NodeLost event")
        given_up = time.monotonic()
        task = wait_for_phase(cluster, name, timeout=400)

    assert unknown["status"] == "Unknown" and unknown["reason"] == "NodeStatusUnknown", unknown
    assert len(lost) == 1, [e["message"] for e in lost]
    message = lost[0]["message"]
    assert victim["metadata"]["name"] in message and node in message and "NotReady" in message, message
    assert f"spec.nodeLostGraceSeconds={grace}" in message, message
    assert given_up - not_ready < 30, "the pod was given up long after the grace"
    assert_every_round_once(cluster, task, recorder)
    second = task["status"]["history"][1]
    victim_device = victim["metadata"]["labels"]["fedtask.io/device"]
    assert victim_device in second["excluded"] and victim_device not in second["returned"], second
    first = {pod["metadata"]["name"] for pod in (victim, survivor, flipped)}
    replacement = round_train_pods(recorder, 2).keys() - first
    assert len(replacement) == 1, sorted(round_train_pods(recorder, 2))
    assert recorder.pods[replacement.pop()]["spec"]["nodeName"] not in (node, INFRA)
    assert events_of(cluster, name, "DeviceReplaced")
    rejected = {event["message"].split(" rejected: ")[0].rsplit("/", 1)[-1]: event["message"]
                for event in events_of(cluster, name, "UpdateRejected")}
    assert sorted(rejected) == sorted(f"{device}.safetensors" for device in (survivor_device, flipped_device)), rejected
    assert "truncated" in rejected[f"{survivor_device}.safetensors"], rejected
    assert "digest mismatch" in rejected[f"{flipped_device}.safetensors"], rejected
    assert sorted(second["rejected"]) == sorted([survivor_device, flipped_device]), second
    print(f"{node}: agent killed, NotReady after {not_ready - killed:.1f}s (node lifecycle controller), NodeLost "
          f"{given_up - not_ready:.1f}s later (grace {grace}s); {len(original)}-byte update truncated, rejected: "
          f"{rejected[f'{survivor_device}.safetensors']}; bit {flip_position} flipped, rejected: "
          f"{rejected[f'{flipped_device}.safetensors']}")


def test_a_node_deleted_mid_round_loses_its_pod_at_once_and_the_task_completes(cluster: LocalCluster):
    name = "node-deleted"
    with CreationRecorder(cluster, name) as recorder:
        victim, _ = start_round_two(cluster, recorder, lost_node_task(name, grace=600))
        node = victim["spec"]["nodeName"]
        kill_node_agent(cluster, node)
        deleted = time.monotonic()
        cluster.kubectl("delete", "node", node, "--wait=true")
        lost = wait_for(lambda: events_of(cluster, name, "NodeLost"), timeout=120, interval=0.2,
                        message="a NodeLost event")
        given_up = time.monotonic()
        task = wait_for_phase(cluster, name, timeout=400)

    assert cluster.kubectl("get", "node", node, check=False).returncode != 0, f"{node} came back"
    assert len(lost) == 1 and victim["metadata"]["name"] in lost[0]["message"], [e["message"] for e in lost]
    assert f"its node {node} was deleted" in lost[0]["message"], lost[0]["message"]
    assert given_up - deleted < 60, "not given up at once (the 600 s NotReady grace does not apply)"
    assert_every_round_once(cluster, task, recorder)
    second = task["status"]["history"][1]
    assert victim["metadata"]["labels"]["fedtask.io/device"] in second["excluded"], second
    assert len(second["returned"]) == 2, second
    assert events_of(cluster, name, "DeviceReplaced")
    print(f"{node} deleted: NodeLost {given_up - deleted:.1f}s after the delete")


def test_a_node_deleted_mid_round_while_its_agent_runs_on_loses_its_pod_and_the_task_completes(
        cluster: LocalCluster):
    name = "node-deleted-live"
    with CreationRecorder(cluster, name) as recorder:
        # 60 local epochs: the victim is still training when its node is deleted, and the agent would let it finish
        victim, survivor = start_round_two(cluster, recorder, lost_node_task(name, grace=600, epochs=60))
        node, victim_name = victim["spec"]["nodeName"], victim["metadata"]["name"]
        deleted = time.monotonic()
        cluster.kubectl("delete", "node", node, "--wait=true")
        lost = wait_for(lambda: events_of(cluster, name, "NodeLost"), timeout=120, interval=0.2,
                        message="a NodeLost event")
        given_up = time.monotonic()
        wait_for(lambda: cluster.kubectl("get", "pod", victim_name, "-n", NAMESPACE, check=False).returncode != 0,
                 timeout=180, interval=0.5, message=f"{victim_name} (bound to the deleted {node}) removed")
        removed = time.monotonic()
        task = wait_for_phase(cluster, name, timeout=400)
        alive = agent_alive(cluster, node)

    assert alive, f"the agent of {node} stopped: the test is about a node deleted while its agent runs"
    assert cluster.kubectl("get", "node", node, check=False).returncode != 0, \
        f"{node} came back (the agent registered it again, which a kubelet does not)"
    assert len(lost) == 1 and victim_name in lost[0]["message"], [e["message"] for e in lost]
    assert f"its node {node} was deleted" in lost[0]["message"], lost[0]["message"]
    assert given_up - deleted < 60, "not given up at once (the 600 s NotReady grace does not apply)"
    assert_every_round_once(cluster, task, recorder)
    second = task["status"]["history"][1]
    victim_device = victim["metadata"]["labels"]["fedtask.io/device"]
    assert victim_device in second["excluded"] and victim_device not in second["returned"], second
    replacement = round_train_pods(recorder, 2).keys() - {victim_name, survivor["metadata"]["name"]}
    assert len(replacement) == 1, sorted(round_train_pods(recorder, 2))
    assert recorder.pods[replacement.pop()]["spec"]["nodeName"] not in (node, INFRA)
    assert events_of(cluster, name, "DeviceReplaced")
    last = recorder.pods.get(victim_name) or {}
    by_gc = any(c.get("reason") == "DeletionByPodGC" for c in (last.get("status") or {}).get("conditions") or ())
    print(f"{node} deleted, its agent running: NodeLost {given_up - deleted:.1f}s after the delete; {victim_name} "
          f"removed {removed - deleted:.1f}s after it ({'pod GC' if by_gc else 'the operator and the agent'})")


def update_object(cluster: LocalCluster, task_uid: str, round_: int, device: str) -> tuple[str, str] | None:
    """(bucket, key) of a device's update of a round in the chart's MinIO, once it is there."""
    client = minio_client(cluster)
    suffix = f"/round-{round_:04d}/updates/{device}.safetensors"
    for bucket in client.list_buckets():
        for obj in client.list_objects(bucket.name, recursive=True):
            if task_uid in obj.object_name and obj.object_name.endswith(suffix):
                return bucket.name, obj.object_name
    return None


def read_object(client, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def truncate_object(cluster: LocalCluster, bucket: str, key: str) -> bytes:
    """Overwrite the object with its first half (a transfer cut short); returns the original bytes."""
    client = minio_client(cluster)
    original = read_object(client, bucket, key)
    half = original[: len(original) // 2]
    client.put_object(bucket, key, io.BytesIO(half), len(half))
    return original


def flip_bit_of_object(cluster: LocalCluster, bucket: str, key: str) -> int:
    """Overwrite the object with one bit flipped (the lowest mantissa bit of its first value: a finite change that
    nothing but the digest catches); returns the bit's position. Read back to check MinIO stored it so."""
    import struct

    client = minio_client(cluster)
    original = read_object(client, bucket, key)
    position = (8 + struct.unpack("<Q", original[:8])[0]) * 8
    changed = bytearray(original)
    changed[position // 8] ^= 1
    client.put_object(bucket, key, io.BytesIO(bytes(changed)), len(changed))
    assert read_object(client, bucket, key) == bytes(changed)
    return position


def minio_client(cluster: LocalCluster):
    """A client of the chart's MinIO (on this machine's :9000: pods share its network) with its root keys."""
    import minio

    access, secret = store_credentials(cluster, minio_deployment(cluster))
    return minio.Minio("127.0.0.1:9000", access_key=access, secret_key=secret, secure=False)


def round_status(cluster: LocalCluster, name: str) -> tuple[int, str]:
    status = cluster.get_json("ft", name, "-n", NAMESPACE).get("status") or {}
    return status.get("round"), status.get("stage")

