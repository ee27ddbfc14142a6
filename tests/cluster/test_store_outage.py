"""The store on the real control plane. A 30 s outage of the store the tasks use (the chart's MinIO Deployment scaled
to zero, then back to one: a new MinIO process on the same PersistentVolume) in the middle of a round: the workers
retry (no pod fails, none is created again), the task completes with every round once, and every round's global model
is in the store. A 5-minute outage outlasts the workers' own retries (60 s): their pods exit 3 and the operator
recreates them after its outage backoff, more times than spec.podRetryLimit allows real failures, within
spec.storeOutageSeconds (default 900); the task completes with nothing lost. The store-cleanup finalizer (the
chart's operator.cleanupStore): `kubectl delete ft` removes the task's objects from the chart's MinIO, and only its
own, before the API server lets the task go."""
from __future__ import annotations

import re
import time

import pytest
import yaml

from tests.support.cluster import (
    NAMESPACE,
    CreationRecorder,
    LocalCluster,
    digits_task,
    minio_deployment,
    minio_pods,
    run_script,
    store_credentials,
    wait_for_phase,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

OUTAGE_SECONDS = 30
LONG_OUTAGE_SECONDS = 300


def minio_objects(cluster: LocalCluster, deployment: dict, task_uid: str) -> dict[str, str]:
    """Every object of the chart's MinIO under a task incarnation (its uid is in the key), with its ETag, read with
    the minio client (pods share the machine's network: the chart's MinIO is on this machine's :9000)."""
    import minio

    access, secret = store_credentials(cluster, deployment)
    client = minio.Minio("127.0.0.1:9000", access_key=access, secret_key=secret, secure=False)
    return {f"{bucket.name}/{obj.object_name}": obj.etag for bucket in client.list_buckets()
            for obj in client.list_objects(bucket.name, recursive=True) if task_uid in obj.object_name}


def store_outage_mid_round(cluster: LocalCluster, manifest: str, name: str, seconds: float,
                           finish_timeout: float = 300) -> tuple[dict, CreationRecorder, float, int]:
    """Apply the task, stop the chart's MinIO for `seconds` once round 2 trains, start it again (a new pod on the same
    volume) and wait for the task to finish: (the task, its pods' recorder, the outage's length, the round then)."""
    deployment = minio_deployment(cluster)
    store_before = {p["metadata"]["uid"] for p in minio_pods(cluster, deployment)}
    with CreationRecorder(cluster, name) as recorder:
        cluster.kubectl("apply", "-f", "-", input=manifest)
        wait_for(lambda: any(p["metadata"]["labels"].get("fedtask.io/round") == "2"
                             and p["metadata"]["labels"].get("fedtask.io/stage") == "train"
                             for _, p in recorder.created), timeout=180, interval=0.2, message="round 2 training")
        minio = deployment["metadata"]["name"]
        cluster.kubectl("scale", "deployment", minio, "-n", NAMESPACE, "--replicas=0")
        try:
            wait_for(lambda: not minio_pods(cluster, deployment), timeout=30, interval=0.2, message="MinIO stopped")
            down_at = time.monotonic()
            time.sleep(seconds)
        finally:
            cluster.kubectl("scale", "deployment", minio, "-n", NAMESPACE, "--replicas=1")
        round_during = cluster.get_json("ft", name, "-n", NAMESPACE)["status"]["round"]
        cluster.kubectl("rollout", "status", "deployment", minio, "-n", NAMESPACE, "--timeout=90s", timeout=100)
        outage = time.monotonic() - down_at
        task = wait_for_phase(cluster, name, timeout=finish_timeout)
    assert outage >= seconds
    assert not {p["metadata"]["uid"] for p in minio_pods(cluster, deployment)} & store_before, "MinIO not restarted"
    return task, recorder, outage, round_during


def assert_nothing_lost(cluster: LocalCluster, task: dict, recorder: CreationRecorder, rounds: int,
                        round_during: int) -> None:
    """Succeeded with every round once (history and one aggregate pod each), no pod name created twice, every
    round's global model in the store."""
    assert round_during < rounds, f"the outage was not mid-task (round {round_during})"
    assert task["status"]["phase"] == "Succeeded", (task["status"].get("message"), task["status"].get("conditions"))
    assert [entry["round"] for entry in task["status"]["history"]] == list(range(1, rounds + 1)), task["status"]
    assert not recorder.errors, recorder.errors
    twice = {pod: uids for pod, uids in recorder.uids.items() if len(uids) > 1}
    assert not twice, f"pod names created twice: {twice}"
    keys = list(minio_objects(cluster, minio_deployment(cluster), task["metadata"]["uid"]))
    for number in range(1, rounds + 1):
        assert any(f"round-{number:04d}/global.safetensors" in key for key in keys), (number, sorted(keys))


def test_a_30s_store_outage_mid_round_is_survived_with_nothing_lost(cluster: LocalCluster):
    name = "store-outage"
    rounds = 4
    manifest = digits_task(name, rounds, {"count": 3, "perRound": 3,
                                          "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}})
    task, recorder, _, round_during = store_outage_mid_round(cluster, manifest, name, OUTAGE_SECONDS)
    assert_nothing_lost(cluster, task, recorder, rounds, round_during)
    failed = [n for n, p in recorder.pods.items() if p["status"].get("phase") == "Failed"]
    assert not failed, f"pods failed (the workers should have retried): {failed}"
    retried = [n for n in recorder.pods if "-a" in n.rsplit("-", 1)[-1][:2]]
    assert not retried, f"pods created again: {retried}"


def exit_code(pod: dict) -> int | None:
    statuses = pod["status"].get("containerStatuses") or []
    terminated = (statuses[0].get("state") or {}).get("terminated") if statuses else None
    return terminated.get("exitCode") if terminated else None


def test_a_5_minute_store_outage_mid_round_outlasts_the_workers_retries_and_nothing_is_lost(cluster: LocalCluster):
    """A tiny task (2 devices, 3 rounds, podRetryLimit 1, storeOutageSeconds left at its default): the pods that need
    the store during the outage exit 3 after the worker's 60 s of retries and are recreated after the operator's
    outage backoff, not counted against podRetryLimit."""
    name = "store-outage-5m"
    rounds = 3
    task_spec = yaml.safe_load(digits_task(name, rounds, {
        "count": 2, "perRound": 2, "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}))
    task_spec["spec"]["podRetryLimit"] = 1
    started = time.monotonic()
    task, recorder, outage, round_during = store_outage_mid_round(
        cluster, yaml.safe_dump(task_spec), name, LONG_OUTAGE_SECONDS, finish_timeout=400)
    assert task["spec"]["storeOutageSeconds"] == 900, "the default covers a 5-minute outage"
    assert_nothing_lost(cluster, task, recorder, rounds, round_during)
    failed = {n: exit_code(p) for n, p in recorder.pods.items() if p["status"].get("phase") == "Failed"}
    assert failed and set(failed.values()) == {3}, f"every failed pod exits 3 (the store): {failed}"
    chains: dict[str, int] = {}
    for pod in failed:
        base = re.sub(r"-a\d+$", "", pod)
        chains[base] = chains.get(base, 0) + 1
    assert max(chains.values()) > 1, f"no pod outlived podRetryLimit 1 on store outages: {chains}"
    events = cluster.get_json("events", "-n", NAMESPACE, "--field-selector",
                              f"involvedObject.uid={task['metadata']['uid']}")["items"]
    reasons = [e["reason"] for e in events]
    assert "StoreUnavailable" in reasons and "PodRetryLimitExceeded" not in reasons, sorted(set(reasons))
    print(f"{outage:.0f}s outage: exit-3 pods {chains}; task done {time.monotonic() - started:.0f}s after it was "
          "applied")


CLEANUP_FINALIZER = "fedtask.io/cleanup-store"


def test_kubectl_delete_removes_the_tasks_objects_from_the_store_then_releases_the_finalizer(cluster: LocalCluster):
    """With the chart's operator.cleanupStore (installed with it for this test, back to the default after), a task
    carries the operator's finalizer; `kubectl delete ft` then removes every object of that task from the chart's
    MinIO, and only those (a second task's stay, byte for byte), before the API server deletes the task."""
    deployment = minio_deployment(cluster)
    run_script("install", "--dir", str(cluster.dir), "--set", "operator.cleanupStore=true", timeout=600)
    try:
        deleted, kept = "cleanup-deleted", "cleanup-kept"
        for name in (deleted, kept):
            cluster.kubectl("apply", "-f", "-", input=digits_task(name, 2, {"count": 2, "perRound": 2}))
        tasks = {name: wait_for_phase(cluster, name, timeout=300) for name in (deleted, kept)}
        uids = {name: task["metadata"]["uid"] for name, task in tasks.items()}
        for task in tasks.values():
            assert task["status"]["phase"] == "Succeeded", task["status"]
            assert CLEANUP_FINALIZER in (task["metadata"].get("finalizers") or []), task["metadata"]
        before = {name: minio_objects(cluster, deployment, uid) for name, uid in uids.items()}
        for name, objects in before.items():
            assert any(key.endswith("round-0002/global.safetensors") for key in objects), (name, sorted(objects))

        started = time.monotonic()
        cluster.kubectl("delete", "ft", deleted, "-n", NAMESPACE, "--wait=false")
        wait_for(lambda: cluster.kubectl("get", "ft", deleted, "-n", NAMESPACE, check=False).returncode != 0,
                 timeout=60, interval=0.2, message=f"{deleted} gone (the finalizer released)")
        released = time.monotonic() - started
        assert minio_objects(cluster, deployment, uids[deleted]) == {}
        assert minio_objects(cluster, deployment, uids[kept]) == before[kept], "another task's objects changed"
        events = cluster.get_json("events", "-n", NAMESPACE, "--field-selector",
                                  f"involvedObject.uid={uids[deleted]}")["items"]
        assert not [e for e in events if e["reason"].startswith("StoreCleanup")], [e["message"] for e in events]
        print(f"{len(before[deleted])} objects deleted, finalizer released {released:.1f}s after kubectl delete")
    finally:
        cluster.kubectl("delete", "ft", "--all", "-n", NAMESPACE, "--wait=true", check=False, timeout=120)
        run_script("install", "--dir", str(cluster.dir), timeout=600)
