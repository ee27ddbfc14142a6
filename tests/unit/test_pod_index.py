"""kube/pod_index.py: the operator keeps a small summary of every pod, and the scheduler's fleet built from the
summaries equals the fleet built from the full pods (free resources, training, pool shards)."""
from __future__ import annotations

import sys

import numpy as np

from fedtask_operator.core.scheduling.fleet import FleetError, build_fleet
from fedtask_operator.core.scheduling.synthetic import make_fleet
from fedtask_operator.kube import pod_index


def varied_pods(nodes: list[dict]) -> list[dict]:
    """Pods of every kind resource accounting meets: several containers, init containers and a sidecar, overhead,
    limits only, an unbound pod pinned by affinity, finished and unbound pods, fedtask train pods of a pool."""
    pods = []
    for i, node in enumerate(nodes[:200]):
        name = node["metadata"]["name"]
        spec: dict = {"nodeName": name, "containers": [
            {"name": "app", "image": "registry/app:1", "command": ["run"] * 20,
             "env": [{"name": f"V{k}", "value": "x" * 50} for k in range(20)],
             "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "side", "image": "registry/side:1", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}
        if i % 3 == 0:
            spec["initContainers"] = [{"name": "init", "resources": {"requests": {"cpu": "2"}}},
                                      {"name": "proxy", "restartPolicy": "Always",
                                       "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]
        if i % 5 == 0:
            spec["overhead"] = {"cpu": "10m"}
        if i % 7 == 0:  # not bound yet, pinned the way fedtask pins its pods
            del spec["nodeName"]
            spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [name]}]}]}}}
        phase = "Succeeded" if i % 11 == 0 else "Running"
        labels = {"app": "web"}
        if i % 13 == 0:
            labels = {"fedtask.io/task": f"t{i}", "fedtask.io/stage": "train", "fedtask.io/device": f"shard-{i}",
                      "fedtask.io/pool": "p"}
        pods.append({"metadata": {"name": f"pod-{i}", "namespace": "ns", "labels": labels}, "spec": spec,
                     "status": {"phase": phase}})
    pods.append({"metadata": {"name": "pending", "namespace": "ns"}, "spec": {"containers": [
        {"resources": {"requests": {"cpu": "1"}}}]}, "status": {"phase": "Pending"}})
    return pods


def test_the_fleet_from_summaries_equals_the_fleet_from_full_pods():
    nodes, system_pods = make_fleet(500, seed=3)
    pods = system_pods + varied_pods(nodes)
    full = build_fleet(nodes, pods)
    summaries = pod_index.summarize_all(pods)
    compact = build_fleet(nodes, list(pod_index.PodsView(summaries)))
    assert full.resources == compact.resources
    assert np.array_equal(full.free, compact.free)
    assert full.training == compact.training and full.training
    assert full.pool_busy == compact.pool_busy
    # finished pods and the unbound, unpinned foreign pod are not kept at all
    kept = {summary.name for summary in summaries}
    assert "pending" not in kept and "pod-11" not in kept and "pod-7" in kept


def test_the_fleet_reads_the_summaries_as_a_stream_one_pod_at_a_time():
    """The operator passes the pod watch's live view, not a list of every expanded pod: a list of 100,000 pods
    costs ~100 MB per scheduling pass, and the process kept that high-water mark."""
    nodes, system_pods = make_fleet(500, seed=3)
    pods = system_pods + varied_pods(nodes)
    summaries = pod_index.summarize_all(pods)
    expanded_at_once = 0
    alive: set[int] = set()

    def tracked():  # how many expanded pods are referenced at the same time while the fleet is built
        nonlocal expanded_at_once
        for pod in pod_index.PodsView(summaries):
            alive.add(id(pod))
            expanded_at_once = max(expanded_at_once, len(alive))
            yield pod
            alive.discard(id(pod))

    streamed = build_fleet(nodes, tracked())
    full = build_fleet(nodes, pods)
    assert np.array_equal(full.free, streamed.free)
    assert full.training == streamed.training and full.pool_busy == streamed.pool_busy
    assert expanded_at_once == 1


def test_pods_that_are_not_objects_are_refused_as_before():
    nodes, _ = make_fleet(5, seed=1)
    for bad in ("pods", 42, {"kind": "List"}):
        try:
            build_fleet(nodes, bad)
        except FleetError as error:
            assert "pods" in str(error)
        else:
            raise AssertionError(f"{bad!r} was accepted as pods")


def test_a_summary_is_small_and_shapes_are_shared():
    nodes, _ = make_fleet(50, seed=1)
    pods = varied_pods(nodes)
    summaries = [s for s in pod_index.summarize_all(pods) if s.labels is None]
    assert summaries[0].containers is summaries[1].containers or summaries[1].containers is summaries[2].containers
    own = sys.getsizeof(summaries[1]) + sys.getsizeof(summaries[1].name)
    assert own < 200, own  # the tuple and its name; node, namespace, phase and containers are shared


def test_unparsable_requests_are_kept_for_the_scheduler_to_report():
    pod = {"metadata": {"name": "bad", "namespace": "ns"},
           "spec": {"nodeName": "node-00000", "containers": [{"resources": {"requests": {"cpu": "lots"}}}]},
           "status": {"phase": "Running"}}
    summary = pod_index.summarize(pod)
    assert summary.containers == ({"resources": {"requests": {"cpu": "lots"}}},)
