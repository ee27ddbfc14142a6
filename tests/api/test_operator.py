"""Scenarios against the real operator (`fedtask operator` subprocess) + kmock + moto S3 + a process kubelet."""
from __future__ import annotations

import time
from datetime import datetime

import pytest

from fedtask_operator.core import conditions
from tests.support.kube import FEDERATEDTASKS, PODS, make_node
from tests.support.operator import DEVICE, digits_task, finished, metric_value, task_events, task_status
from tests.support.waiting import wait_for

pytestmark = pytest.mark.api


def test_a_three_round_task_succeeds_with_history_model_and_metrics(cluster, operator, kubelet):
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(make_node("node-b", labels=DEVICE))
    cluster.apply(digits_task("digits"))

    status = wait_for(lambda: finished(cluster, "digits"), timeout=150, message="the task to finish")

    assert status["phase"] == "Succeeded", status
    assert [record["round"] for record in status["history"]] == [1, 2, 3]
    assert all(len(record["returned"]) == 2 for record in status["history"])
    assert status["model"]["uri"].startswith("s3://fedtask/")
    assert 0.0 < status["accuracy"] <= 1.0
    assert conditions.is_true(status["conditions"], conditions.SUCCEEDED)
    def reasons():
        """the task's events: started, 3 rounds started and completed, succeeded"""
        found = [event["reason"] for event in task_events(cluster, "digits")]
        return found if found.count("RoundCompleted") == 3 and "TaskSucceeded" in found else None

    found = wait_for(reasons, timeout=10)
    assert found.count("RoundStarted") == 3 and "Started" in found, found
    completed = [event["message"] for event in task_events(cluster, "digits") if event["reason"] == "RoundCompleted"]
    assert all("accuracy" in message for message in completed), completed
    text = operator.metrics()
    assert metric_value(text, "fedtask_rounds_total", namespace="default", task="digits") == 3.0
    assert metric_value(text, "fedtask_task_round", namespace="default", task="digits") == 3.0
    assert metric_value(text, "fedtask_task_accuracy", namespace="default", task="digits") == pytest.approx(
        status["history"][-1]["accuracy"])
    assert metric_value(text, "fedtask_round_duration_seconds_count", namespace="default", task="digits",
                        stage="round") == 3.0
    assert metric_value(text, "fedtask_update_bytes_total", namespace="default", task="digits") > 0
    # every pod ran exactly once (no failures were injected) and pods carry the owner reference
    assert len(kubelet.started) == len(set(kubelet.started))
    owners = {ref["uid"] for pod in cluster.history(PODS) for ref in pod["metadata"].get("ownerReferences", [])}
    assert owners == {cluster.get(FEDERATEDTASKS, "default", "digits")["metadata"]["uid"]}


def train_pods(kubelet, task: str) -> list[str]:
    return [name for name in kubelet.started if name.startswith(f"{task}-r") and "-train-" in name]


def test_a_gpu_task_lands_only_on_a_ready_untainted_uncordoned_node_with_a_free_gpu(cluster, operator, kubelet):
    taint = [{"key": "maintenance", "value": "true", "effect": "NoSchedule"}]
    cluster.apply(make_node("gpu-free", gpus=1, labels=DEVICE))
    cluster.apply(make_node("gpu-cordoned", gpus=4, labels=DEVICE, unschedulable=True))
    cluster.apply(make_node("gpu-notready", gpus=4, labels=DEVICE, ready=False))
    cluster.apply(make_node("gpu-tainted", gpus=4, labels=DEVICE, taints=taint))
    cluster.apply(make_node("cpu-only", cpu="16", labels=DEVICE))
    gpu = {"count": 2, "perRound": 1,
           "resources": {"requests": {"cpu": "250m", "memory": "128Mi", "nvidia.com/gpu": "1"},
                         "limits": {"nvidia.com/gpu": "1"}}}
    cluster.apply(digits_task("gpu", rounds=2, devices=gpu))

    status = wait_for(lambda: finished(cluster, "gpu"), timeout=120, message="the GPU task to finish")

    assert status["phase"] == "Succeeded", status.get("message")
    placed = {kubelet.bindings[name] for name in train_pods(kubelet, "gpu")}
    assert placed == {"gpu-free"}, placed


def test_an_unschedulable_task_says_why_and_starts_when_a_suitable_node_appears(cluster, operator, kubelet):
    cluster.apply(make_node("plain", labels={}))  # not a device node: the selector matches nothing
    cluster.apply(digits_task("waiting", rounds=1))

    def unschedulable():
        """the Unschedulable condition"""
        found = conditions.get_condition(task_status(cluster, "waiting").get("conditions"), conditions.UNSCHEDULABLE)
        return found if found and found["status"] == conditions.TRUE else None

    condition = wait_for(unschedulable, timeout=30)
    assert condition["reason"] in (conditions.REASON_WAITING_FOR_DEVICES, conditions.REASON_NO_MATCHING_NODES,
                                   conditions.REASON_INSUFFICIENT_DEVICES, conditions.REASON_INSUFFICIENT_RESOURCES), \
        condition
    assert "selector" in condition["message"], condition
    assert not train_pods(kubelet, "waiting")
    wait_for(lambda: any(event["type"] == "Warning" for event in task_events(cluster, "waiting")), timeout=10,
             message="a Warning event saying why")  # kopf posts events in the background

    cluster.apply(make_node("device", labels=DEVICE))
    status = wait_for(lambda: finished(cluster, "waiting"), timeout=90, message="the task to start and finish")

    assert status["phase"] == "Succeeded", status.get("message")
    assert not conditions.is_true(status["conditions"], conditions.UNSCHEDULABLE)


def test_a_failing_training_pod_is_retried_then_replaced_and_the_round_completes(cluster, operator, kubelet):
    cluster.apply(make_node("node-a", labels=DEVICE))
    kubelet.fail_device("flaky-r0001-train-", times=2)  # the first attempt and its one retry (podRetryLimit 1)
    cluster.apply(digits_task("flaky", rounds=1, devices={"count": 3, "perRound": 2}))

    status = wait_for(lambda: finished(cluster, "flaky"), timeout=120, message="the task to finish")

    assert status["phase"] == "Succeeded", status.get("message")
    wait_for(lambda: {"PodFailed", "DeviceReplaced"} <= {e["reason"] for e in task_events(cluster, "flaky")},
             timeout=10, message="PodFailed and DeviceReplaced events")
    started = train_pods(kubelet, "flaky")
    failed_device = started[0].split("-train-")[1]
    assert f"flaky-r0001-train-{failed_device}-a1" in started, started  # retried under a new attempt name
    record = status["history"][0]
    assert failed_device not in record["returned"] and len(record["returned"]) == 2, record  # replaced
    text = operator.metrics()
    assert metric_value(text, "fedtask_pod_failures_total", namespace="default", task="flaky", stage="train") == 2.0
    assert metric_value(text, "fedtask_rounds_total", namespace="default", task="flaky") == 1.0


def test_an_operator_killed_mid_round_resumes_without_repeating_a_round_or_a_pod(cluster, operator, kubelet):
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(make_node("node-b", labels=DEVICE))
    cluster.apply(digits_task("phoenix", rounds=2))
    wait_for(lambda: task_status(cluster, "phoenix").get("round") == 2, timeout=60, message="round 2")

    operator.kill()
    operator.start()

    status = wait_for(lambda: finished(cluster, "phoenix"), timeout=120, message="the task to finish")
    assert status["phase"] == "Succeeded", status.get("message")
    assert [record["round"] for record in status["history"]] == [1, 2]
    assert len(kubelet.started) == len(set(kubelet.started)), kubelet.started  # no pod was created twice
    assert not any("-a1" in name for name in kubelet.started)  # and none was retried
    text = wait_for(operator.metrics, timeout=10)
    # the restarted process counts only what it saw finish; the status is the record of the rounds
    assert metric_value(text, "fedtask_task_round", namespace="default", task="phoenix") == 2.0


@pytest.mark.slow
def test_suspend_resume_continues_at_the_same_round_and_deleting_a_task_removes_its_pods(cluster, operator, kubelet):
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(make_node("node-b", labels=DEVICE))
    cluster.apply(digits_task("pausable", rounds=3))
    wait_for(lambda: task_status(cluster, "pausable").get("round") == 2, timeout=60, message="round 2")

    cluster.patch(FEDERATEDTASKS, "default", "pausable", {"spec": {"suspend": True}})
    suspended = wait_for(lambda: (lambda s: s if s.get("phase") == "Suspended" else None)(
        task_status(cluster, "pausable")), timeout=30, message="Suspended")
    suspended_round = suspended["round"]
    wait_for(lambda: not [p for p in cluster.objects(PODS, "default") if p["metadata"]["name"].startswith("pausable-")],
             timeout=30, message="the suspended task's pods to go")
    started_while_suspended = len(kubelet.started)
    cluster.patch(FEDERATEDTASKS, "default", "pausable", {"spec": {"suspend": False}})

    status = wait_for(lambda: finished(cluster, "pausable"), timeout=120, message="the task to finish")
    assert status["phase"] == "Succeeded", status.get("message")
    assert [record["round"] for record in status["history"]] == [1, 2, 3]
    assert suspended_round in (2, 3)
    assert len(kubelet.started) > started_while_suspended

    cluster.apply(digits_task("doomed", rounds=3))
    wait_for(lambda: [p for p in cluster.objects(PODS, "default") if p["metadata"]["name"].startswith("doomed-r0001")],
             timeout=60, message="doomed's round 1 pods")
    wait_for(lambda: metric_value(operator.metrics(), "fedtask_task_round", namespace="default", task="doomed")
             is not None, timeout=10, message="doomed's metrics")
    cluster.delete(FEDERATEDTASKS, "default", "doomed")

    left = lambda: [(p["metadata"]["name"], p["metadata"].get("ownerReferences"), p.get("status", {}).get("phase"))  # noqa: E731
                    for p in cluster.objects(PODS, "default") if p["metadata"]["name"].startswith("doomed-")]
    wait_for(lambda: not left(), timeout=10, message="doomed's pods to be removed")
    wait_for(lambda: 'task="doomed"' not in operator.metrics(), timeout=10, message="doomed's series to be removed")


@pytest.mark.slow
def test_store_cleanup_on_delete_uses_a_finalizer_and_removes_the_task_objects(cluster, s3_server, store_bucket,
                                                                              kubelet, tmp_path):
    from tests.support.operator import OperatorProcess

    cluster.apply(make_node("node-a", labels=DEVICE))
    with OperatorProcess(cluster, s3_server, tmp_path / "operator.log", "--standalone", "--cleanup-store",
                         "--clean-pod-policy=None") as operator:
        cluster.apply(digits_task("tidy", rounds=1))
        status = wait_for(lambda: finished(cluster, "tidy"), timeout=120, message="the task to finish")
        assert status["phase"] == "Succeeded", status.get("message")
        task = cluster.get(FEDERATEDTASKS, "default", "tidy")
        assert task["metadata"].get("finalizers") == ["fedtask.io/cleanup-store"]
        finished_pods = [p for p in cluster.objects(PODS, "default") if p["metadata"]["name"].startswith("tidy-r0001")]
        assert finished_pods, "cleanPodPolicy None keeps finished pods"
        client = s3_server.client()
        prefix = f"default/tidy/{task['metadata']['uid']}/"
        assert list(client.list_objects("fedtask", prefix=prefix, recursive=True))

        cluster.delete(FEDERATEDTASKS, "default", "tidy")
        wait_for(lambda: cluster.get(FEDERATEDTASKS, "default", "tidy") is None, timeout=30, message="the deletion")
        assert not list(client.list_objects("fedtask", prefix=prefix, recursive=True))
        print(operator.log()[-3000:])


def test_two_tasks_competing_for_one_node_take_turns_and_both_succeed(cluster, operator, kubelet):
    """A node with room for one train pod: the waiting task says what is short, and the rounds never overlap."""
    cluster.apply(make_node("only", cpu="1", labels=DEVICE))
    one_at_a_time = {"count": 2, "perRound": 1, "resources": {"requests": {"cpu": "1", "memory": "128Mi"}}}
    kubelet.hold("alpha-r0001-train-")
    cluster.apply(digits_task("alpha", rounds=2, devices=one_at_a_time))
    wait_for(lambda: train_pods(kubelet, "alpha"), timeout=60, message="alpha's first train pod")
    cluster.apply(digits_task("beta", rounds=2, devices=one_at_a_time))

    def beta_waits():
        """beta's Unschedulable condition"""
        found = conditions.get_condition(task_status(cluster, "beta").get("conditions"), conditions.UNSCHEDULABLE)
        return found if found and found["status"] == conditions.TRUE else None

    waiting = wait_for(beta_waits, timeout=60)
    assert waiting["reason"] == conditions.REASON_WAITING_FOR_DEVICES, waiting
    assert "short of cpu (0 free, 1 requested)" in waiting["message"], waiting  # alpha's train pod holds it
    kubelet.release("alpha-r0001-train-")
    statuses = [wait_for(lambda name=name: finished(cluster, name), timeout=150, message=f"{name} to finish")
                for name in ("alpha", "beta")]

    assert [status["phase"] for status in statuses] == ["Succeeded", "Succeeded"], [s.get("message") for s in statuses]
    trains = train_pods(kubelet, "alpha") + train_pods(kubelet, "beta")
    assert len(trains) == 4 and {kubelet.bindings[name] for name in trains} == {"only"}, trains
    overlapping = {name: kubelet.neighbours[name] for name in trains
                   if any("-train-" in other for other in kubelet.neighbours[name])}
    assert not overlapping, overlapping  # the node never ran two train pods at once
    for status in statuses:
        assert [len(record["returned"]) for record in status["history"]] == [1, 1]
        assert [entry["node"] for entry in status["assignment"]] == ["only"], status["assignment"]
    wait_for(lambda: any(event["reason"] == "DeviceUnschedulable" and event["type"] == "Warning"
                         for event in task_events(cluster, "beta")), timeout=10, message="beta's Warning event")


def test_a_finished_task_is_deleted_by_the_operator_once_its_ttl_has_passed(cluster, operator, kubelet):
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(digits_task("brief", rounds=1, ttlSecondsAfterFinished=2))

    # Judged from what the server recorded, not by catching the finished task between two polls: the window
    # between the Succeeded write and the delete is 1-2 s (completionTime has second precision), and under load this
    # process once missed it (it then saw the task deleted "before its ttl", or never saw it finish).
    wait_for(lambda: cluster.get(FEDERATEDTASKS, "default", "brief") is None, timeout=150,
             message="the task to finish and the operator to delete it 2 s after")
    finals = [version["status"] for version in cluster.history(FEDERATEDTASKS)
              if version["metadata"]["name"] == "brief" and (version.get("status") or {}).get("completionTime")]
    assert finals and finals[-1]["phase"] == "Succeeded", finals[-1:] or "no finished version"
    deletes = [when for when, action, plural, name, _ in cluster.emulator.timeline
               if action == "delete" and plural == "federatedtasks" and name == "brief"]
    assert deletes, "no DELETE of the task reached the server"  # the operator's own (the test deletes nothing)
    deleted_at = time.time() - (time.monotonic() - deletes[0])  # the monotonic arrival time on the wall clock
    due = datetime.fromisoformat(finals[-1]["completionTime"].replace("Z", "+00:00")).timestamp() + 2
    assert deleted_at >= due, f"deleted {due - deleted_at:.2f} s before completionTime + ttl"
