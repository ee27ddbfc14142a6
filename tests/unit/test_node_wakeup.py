"""A node's change wakes the tasks it concerns: those waiting for devices, and those with a pod on it (so a node
turning NotReady or deleted reaches the planner's lost-node handling without waiting for a round timeout)."""
from __future__ import annotations

from fedtask_operator.kube.handlers import tasks_to_wake_for_node
from fedtask_operator.kube.reconciler import ClusterView


def task(stage: str) -> dict:
    return {"metadata": {"name": "t"}, "status": {"stage": stage}}


def pod(node: str | None = None, pinned: str | None = None) -> dict:
    spec: dict = {}
    if node:
        spec["nodeName"] = node
    if pinned:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [pinned]}]}]}}}
    return {"metadata": {"name": "p"}, "spec": spec}


def test_tasks_with_a_pod_on_the_node_and_waiting_tasks_are_woken_no_others():
    views = ClusterView(
        task_pods={("ns", "bound"): [pod(node="n1")], ("ns", "pinned"): [pod(pinned="n1")],
                   ("ns", "elsewhere"): [pod(node="n2")], ("ns", "waiting"): []},
        nodes=[], pods=[],
        tasks={("ns", "bound"): [task("Aggregating")], ("ns", "pinned"): [task("Training")],
               ("ns", "elsewhere"): [task("Training")], ("ns", "waiting"): [task("Scheduling")]})
    assert sorted(tasks_to_wake_for_node(views, "n1")) == [("ns", "bound"), ("ns", "pinned"), ("ns", "waiting")]
    assert sorted(tasks_to_wake_for_node(views, None)) == [("ns", "waiting")]
