"""The round planner driven through whole tasks by a tiny pure simulator (tests/support/planner.py: an API server,
a kubelet whose pods finish or fail when the test says so, and a scheduler that hands out free devices), which
applies plans with the runtimes' own `apply_plan` (core/apply.py)."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtask_operator.core.confinement import Confinement
from fedtask_operator.core.planner import observe_pod
from fedtask_operator.core.spec import HISTORY_LIMIT
from tests.support.planner import (
    CONFIG,
    ROUND_LABEL,
    STAGE_LABEL,
    Cluster,
    make_task,
    node,
    result_for,
    train_pods,
)

# ====================================================================================================================
# Tests


def test_first_plan_creates_the_init_pod_only():
    cluster = Cluster(make_task())
    plan = cluster.reconcile()
    assert [pod["metadata"]["name"] for pod in plan.create] == ["mnist-init"]
    assert plan.delete == [] and not plan.needs_devices
    status = cluster.status
    assert (status["phase"], status["round"], status["stage"]) == ("Pending", 0, "Initializing")
    assert status["startTime"] == "2026-11-28T05:00:00Z" and status["observedGeneration"] == 1
    assert status["shardCount"] == 6
    assert cluster.event_reasons() == ["Started"]
    # nothing changed: nothing to do, and no duplicate pod or event
    plan = cluster.reconcile()
    assert plan.create == [] and plan.delete == [] and plan.events == []


def test_whole_task_runs_every_round_once_and_publishes():
    cluster = Cluster(make_task())
    cluster.run_to_end()
    status = cluster.status
    assert status["phase"] == "Succeeded" and status["completionTime"]
    assert cluster.created == (["mnist-init"]
                               + train_pods(1, "d000", "d001", "d002") + ["mnist-r0001-aggregate", "mnist-r0001-adjust"]
                               + train_pods(2, "d003", "d004", "d005") + ["mnist-r0002-aggregate", "mnist-r0002-adjust"]
                               + train_pods(3, "d000", "d001", "d002")
                               + ["mnist-r0003-aggregate", "mnist-r0003-adjust"])
    assert cluster.pods == {}, "every finished pod is cleaned up"
    assert sorted(cluster.deleted) == sorted(cluster.created)
    assert cluster.event_reasons() == (["Started"] + ["RoundStarted", "RoundCompleted"] * 3
                                       + ["ModelPublished", "TaskSucceeded"])
    history = status["history"]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert [h["accuracy"] for h in history] == [0.6, 0.7, 0.8]
    first = history[0]
    assert first["devices"] == first["returned"] == ["d000", "d001", "d002"] and first["excluded"] == []
    assert first["samples"] == 300 and first["rejected"] == []
    for key in ("startTime", "durationSeconds", "trainSeconds", "aggregateSeconds", "adjustSeconds", "loss"):
        assert key in first, key
    assert first["durationSeconds"] >= first["trainSeconds"] > 0
    base = "s3://fedtask/tasks/default/mnist/uid-1"
    assert status["model"] == {"uri": f"{base}/round-0003/global.safetensors", "round": 3, "accuracy": 0.8}
    assert status["best"] == status["model"]
    assert status["participation"] == {"d000": 2, "d001": 2, "d002": 2, "d003": 1, "d004": 1, "d005": 1}
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "True" and succeeded["reason"] == "MaxRoundsReached"
    assert "RoundCompleted" in cluster.event_reasons()
    completed = [e.message for e in cluster.events if e.reason == "RoundCompleted"]
    assert "accuracy 0.6000" in completed[0]


def test_round_flow_step_by_step():
    cluster = Cluster(make_task())
    cluster.reconcile()
    cluster.succeed("mnist-init")
    plan = cluster.reconcile()  # init recorded, round 1 scheduled and launched in one pass
    assert cluster.schedule_calls == 1
    assert [p["metadata"]["name"] for p in plan.create] == train_pods(1, "d000", "d001", "d002")
    status = cluster.status
    assert (status["phase"], status["round"], status["stage"]) == ("Running", 1, "Training")
    assert [(d["device"], d["node"], d["state"]) for d in status["devices"]] == [
        ("d000", "node-0", "Pending"), ("d001", "node-1", "Pending"), ("d002", "node-0", "Pending")]
    assert "mnist-init" not in plan.delete, "the init result is recorded by this very plan: delete it next time"
    assert plan.requeue_after == 60  # the round deadline
    plan = cluster.reconcile()
    assert plan.delete == ["mnist-init"] and plan.create == []
    cluster.start("mnist-r0001-train-d000")
    cluster.succeed("mnist-r0001-train-d001")
    cluster.tick(10)
    plan = cluster.reconcile()
    assert plan.requeue_after == 50
    states = {d["device"]: d["state"] for d in cluster.status["devices"]}
    assert states == {"d000": "Running", "d001": "Succeeded", "d002": "Pending"}
    assert cluster.status["devices"][1]["result"]["num_samples"] == 100
    assert plan.delete == [], "finished pods of a running stage stay until the stage ends"
    cluster.succeed("mnist-r0001-train-d000")
    cluster.succeed("mnist-r0001-train-d002")
    plan = cluster.reconcile()
    assert cluster.status["stage"] == "Aggregating"
    aggregate = plan.create[0]
    assert aggregate["metadata"]["name"] == "mnist-r0001-aggregate"
    updates = [a for a in aggregate["spec"]["containers"][0]["args"] if "/updates/" in a]
    assert updates == sorted(updates) and len(updates) == 3
    assert plan.delete == train_pods(1, "d001"), "only the pod whose result was already in status"
    plan = cluster.reconcile()
    assert plan.delete == train_pods(1, "d000", "d002")
    cluster.succeed("mnist-r0001-aggregate")
    cluster.reconcile()
    assert cluster.status["stage"] == "Adjusting"
    assert cluster.active() == ["mnist-r0001-adjust"]
    cluster.succeed("mnist-r0001-adjust")
    plan = cluster.reconcile()
    assert cluster.status["round"] == 2 and cluster.status["stage"] == "Training"
    assert cluster.status["history"][-1]["round"] == 1
    assert cluster.status.get("currentRound", {}).get("round") == 2


def test_unschedulable_waits_with_condition_then_proceeds():
    cluster = Cluster(make_task())
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.waiting_reason = "0/2 nodes qualify: nvidia.com/gpu short on 2 nodes"
    plan = cluster.reconcile()
    assert cluster.status["stage"] == "Scheduling" and plan.create == []
    assert plan.requeue_after == 10
    unschedulable = next(c for c in cluster.status["conditions"] if c["type"] == "Unschedulable")
    assert unschedulable["status"] == "True" and "nvidia.com/gpu short on 2 nodes" in unschedulable["message"]
    assert cluster.event_reasons().count("DeviceUnschedulable") == 1
    cluster.tick(10)
    cluster.reconcile()
    assert cluster.event_reasons().count("DeviceUnschedulable") == 1, "no event storm while nothing changes"
    cluster.waiting_reason = None
    cluster.devices = ["d000", "d001"]  # fewer than perRound (3) = minReturned
    cluster.reconcile()
    unschedulable = next(c for c in cluster.status["conditions"] if c["type"] == "Unschedulable")
    assert unschedulable["reason"] == "InsufficientDevices" and "only 2 devices qualify, 3 needed" in \
        unschedulable["message"]
    cluster.devices = ["d000", "d001", "d002", "d003"]
    cluster.reconcile()
    assert cluster.status["stage"] == "Training"
    unschedulable = next(c for c in cluster.status["conditions"] if c["type"] == "Unschedulable")
    assert unschedulable["status"] == "False"
    assert "waitingSince" not in cluster.status


def test_device_request_describes_the_task():
    task = make_task(devices={"perRound": 3, "count": 6, "resources": {"requests": {"cpu": "500m"}}},
                     scheduling={"priority": 5, "policy": "fastest"})
    cluster = Cluster(task)
    cluster.reconcile()
    cluster.succeed("mnist-init")
    plan = cluster.plan()
    assert plan.needs_devices
    request = plan.device_request
    assert (request.task, request.per_round, request.shard_count, request.node_devices) == ("default/mnist", 3, 6,
                                                                                          False)
    assert request.requests == {"cpu": "500m"} and request.priority == 5 and request.policy == "fastest"
    assert request.selector == {"matchLabels": {"fedtask.io/device": "true"}, "matchExpressions": []}
    assert request.round == 1 and request.waiting_since is not None


def test_straggler_is_excluded_after_the_round_deadline_when_quorum_is_met():
    cluster = Cluster(make_task(devices={"minReturned": 2}))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.succeed("mnist-r0001-train-d000")
    cluster.succeed("mnist-r0001-train-d001")
    cluster.start("mnist-r0001-train-d002")
    cluster.tick(30)
    plan = cluster.reconcile()
    assert cluster.status["stage"] == "Training" and plan.requeue_after == 30
    cluster.tick(30)
    plan = cluster.reconcile()
    assert cluster.status["stage"] == "Aggregating"
    assert "mnist-r0001-train-d002" in plan.delete, "a running straggler has no result to lose"
    straggler = cluster.status["devices"][2]
    assert straggler["state"] == "Excluded" and "timeoutSeconds=60" in straggler["reason"]
    assert cluster.event_reasons().count("StragglerExcluded") == 1
    updates = [a for a in plan.create[0]["spec"]["containers"][0]["args"] if "/updates/" in a]
    assert [u.rsplit("/", 1)[1] for u in updates] == ["d000.safetensors", "d001.safetensors"]
    cluster.run_to_end()
    first = cluster.status["history"][0]
    assert first["returned"] == ["d000", "d001"] and first["excluded"] == ["d002"]
    assert first["devices"] == ["d000", "d001", "d002"]


def test_round_waits_past_deadline_without_quorum_and_says_so():
    cluster = Cluster(make_task())  # minReturned defaults to perRound: wait for all
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.succeed("mnist-r0001-train-d000")
    cluster.tick(61)
    cluster.reconcile()
    stalled = next(c for c in cluster.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "QuorumNotReached"
    assert "1 of 3 needed updates" in stalled["message"]
    assert cluster.status["stage"] == "Training"
    cluster.finish_all()
    cluster.reconcile()
    assert cluster.status["stage"] == "Aggregating"
    assert not any(c["type"] == "Stalled" for c in cluster.status["conditions"])


def test_failed_pod_is_retried_with_a_new_name_and_recorded_before_deletion():
    cluster = Cluster(make_task(podRetryLimit=2))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.fail("mnist-r0001-train-d001", message="CUDA error: device lost")
    plan = cluster.reconcile()
    assert [p["metadata"]["name"] for p in plan.create] == ["mnist-r0001-train-d001-a1"]
    assert "mnist-r0001-train-d001" not in plan.delete, "the failure is recorded by this plan, deleted by the next"
    device = cluster.status["devices"][1]
    assert (device["pod"], device["attempts"], device["state"]) == ("mnist-r0001-train-d001-a1", 1, "Pending")
    failure = [e for e in cluster.events if e.reason == "PodFailed"]
    assert len(failure) == 1 and failure[0].type == "Warning" and "CUDA error: device lost" in failure[0].message
    plan = cluster.reconcile()
    assert plan.delete == ["mnist-r0001-train-d001"]
    cluster.fail("mnist-r0001-train-d001-a1")
    cluster.reconcile()
    assert cluster.status["devices"][1]["pod"] == "mnist-r0001-train-d001-a2"
    cluster.run_to_end()
    assert cluster.status["phase"] == "Succeeded"
    assert cluster.status["history"][0]["returned"] == ["d000", "d001", "d002"]


def test_bad_input_is_not_retried_and_the_device_is_replaced():
    cluster = Cluster(make_task(podRetryLimit=3))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.fail("mnist-r0001-train-d001", exit_code=2, message="dataset 'x' not found")
    plan = cluster.reconcile()
    assert cluster.schedule_calls == 2 and cluster.requests[-1].per_round == 1
    assert [p["metadata"]["name"] for p in plan.create] == train_pods(1, "d003")
    devices = {d["device"]: d for d in cluster.status["devices"]}
    assert devices["d001"]["state"] == "Failed" and "bad input" in devices["d001"]["reason"]
    assert devices["d001"]["attempts"] == 0
    assert devices["d003"]["state"] == "Pending"
    assert {"DeviceFailed", "DeviceReplaced"} <= set(cluster.event_reasons())
    cluster.run_to_end()
    first = cluster.status["history"][0]
    assert first["returned"] == ["d000", "d002", "d003"] and first["excluded"] == ["d001"]


def test_failed_device_without_replacement_proceeds_when_quorum_is_met():
    cluster = Cluster(make_task(devices={"minReturned": 2}, podRetryLimit=0))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.free_devices = []  # nothing left to replace a failed device
    cluster.fail("mnist-r0001-train-d002")
    cluster.succeed("mnist-r0001-train-d000")
    cluster.reconcile()
    assert cluster.status["stage"] == "Training", "d001 is still training"
    cluster.succeed("mnist-r0001-train-d001")
    cluster.reconcile()
    assert cluster.status["stage"] == "Aggregating"
    assert cluster.status["currentRound"]["excluded"] == ["d002"]


def test_failed_device_without_replacement_below_quorum_fails_the_task_with_a_fix():
    cluster = Cluster(make_task(podRetryLimit=0))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.free_devices = []
    cluster.fail("mnist-r0001-train-d002", message="out of memory")
    cluster.finish_all()
    plan = cluster.reconcile()
    status = cluster.status
    assert status["phase"] == "Failed" and status["completionTime"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "QuorumNotReached"
    assert "only 2 of 3 devices returned" in failed["message"] and "out of memory" in failed["message"]
    assert "minReturned" in failed["message"] and "podRetryLimit" in failed["message"]
    assert plan.create == [] and "TaskFailed" in cluster.event_reasons()
    plan = cluster.reconcile()
    assert plan.create == [] and plan.delete == [], "a failed task keeps its finished pods for inspection"


@pytest.mark.parametrize("stage_pod", ["mnist-init", "mnist-r0001-aggregate", "mnist-r0001-adjust"])
def test_server_stage_failing_after_retries_fails_the_task(stage_pod):
    cluster = Cluster(make_task(podRetryLimit=1))
    cluster.advance_until(lambda: stage_pod in cluster.pods, limit=12)
    cluster.fail(stage_pod)
    cluster.reconcile()
    assert f"{stage_pod}-a1" in cluster.pods and cluster.status["current"]["attempts"] == 1
    cluster.fail(f"{stage_pod}-a1", message="store unreachable")
    cluster.reconcile()
    failed = next(c for c in cluster.status["conditions"] if c["type"] == "Failed")
    assert cluster.status["phase"] == "Failed" and failed["reason"] == "PodRetryLimitExceeded"
    assert "store unreachable" in failed["message"] and "podRetryLimit 1 reached" in failed["message"]


def test_pod_retry_limit_counts_retries_per_pod_not_per_task_unlike_a_job():
    # A Job's backoffLimit counts every failed pod of the Job; spec.podRetryLimit counts the retries of one pod (one
    # device's train pod in a round, one server-side stage pod, one publish pod): three pods failing once each stay
    # within podRetryLimit 1, and the task succeeds.
    cluster = Cluster(make_task(podRetryLimit=1))
    failed = []
    for pod in ("mnist-r0001-train-d001", "mnist-r0001-aggregate", "mnist-r0002-train-d004"):
        cluster.advance_until(lambda: pod in cluster.pods, limit=20)
        cluster.fail(pod)
        failed.append(pod)
        cluster.reconcile()
        assert cluster.status["phase"] == "Running", pod
    cluster.run_to_end()

    assert cluster.status["phase"] == "Succeeded"
    assert len([e for e in cluster.events if e.reason == "PodFailed"]) == len(failed) == 3
    assert {f"{pod}-a1" for pod in failed} <= set(cluster.created)
    assert cluster.status["history"][0]["returned"] == ["d000", "d001", "d002"]


def test_server_stage_with_bad_input_fails_at_once():
    cluster = Cluster(make_task(podRetryLimit=3))
    cluster.reconcile()
    cluster.fail("mnist-init", exit_code=2, message="spec.model.initialUri: not a safetensors file")
    plan = cluster.reconcile()
    failed = next(c for c in cluster.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "StageFailed" and "not a safetensors file" in failed["message"]
    assert plan.create == [] and "spec.model" in failed["message"]


def test_update_rejected_events_come_from_the_aggregate_result():
    cluster = Cluster(make_task())
    cluster.advance_until(lambda: "mnist-r0001-aggregate" in cluster.pods, limit=6)
    uri = "s3://fedtask/tasks/default/mnist/uid-1/round-0001/updates/d001.safetensors"
    cluster.succeed("mnist-r0001-aggregate",
                    {"updates": 2, "rejected": [{"uri": uri, "reason": "non-finite values in fc1.weight"}],
                     "seconds": 0.1, "bytes": 10})
    cluster.reconcile()
    rejected = [e for e in cluster.events if e.reason == "UpdateRejected"]
    assert len(rejected) == 1 and "fc1.weight" in rejected[0].message and rejected[0].type == "Warning"
    assert cluster.status["currentRound"]["rejected"] == ["d001"]
    cluster.finish_all()
    cluster.reconcile()
    assert cluster.status["history"][0]["rejected"] == ["d001"]


def test_all_updates_rejected_fails_the_task():
    cluster = Cluster(make_task())
    cluster.advance_until(lambda: "mnist-r0001-aggregate" in cluster.pods, limit=6)
    cluster.succeed("mnist-r0001-aggregate", {"updates": 0, "rejected": [], "seconds": 0.1})
    cluster.reconcile()
    assert cluster.status["phase"] == "Failed"
    assert next(c for c in cluster.status["conditions"] if c["type"] == "Failed")["reason"] == "AllUpdatesRejected"


def aggregate_args_after_training(cluster: Cluster, samples: dict[str, int]) -> list[str]:
    """Train every device of round 1 reporting `samples` (by device, else 100); the aggregate pod's args."""
    for _ in range(6):
        cluster.reconcile()
        if "mnist-r0001-aggregate" in cluster.pods:
            return cluster.pods["mnist-r0001-aggregate"]["spec"]["containers"][0]["args"]
        for name in cluster.active():
            device = cluster.pods[name]["metadata"]["labels"].get("fedtask.io/device")
            result = result_for(cluster.pods[name])
            if device in samples:
                result["num_samples"] = samples[device]
            cluster.succeed(name, result)
    raise AssertionError("no aggregate pod")


def test_shard_updates_are_capped_by_the_samples_their_train_pods_reported():
    cluster = Cluster(make_task(aggregation={"clipNorm": 3.0}), devices=["d000", "d001", "d002"])
    args = aggregate_args_after_training(cluster, {"d000": 812, "d001": 0, "d002": 797})
    assert args[args.index("--sample-caps") + 1] == "d000=812,d001=0,d002=797"
    assert args[args.index("--clip-norm") + 1] == "3.0" and "--max-samples" not in args


def test_node_device_updates_are_capped_by_the_spec_bound_only():
    nodes = [node("edge-a"), node("edge-b")]
    task = make_task(data={"source": "hostPath"}, devices={"count": None, "perRound": 2},
                     aggregation={"maxSamplesPerUpdate": 5000})
    task["spec"]["devices"].pop("count")
    args = aggregate_args_after_training(Cluster(task, devices=["edge-a", "edge-b"], nodes=nodes),
                                         {"edge-a": 10 ** 15})
    assert args[args.index("--max-samples") + 1] == "5000" and "--sample-caps" not in args


def adjust_results(accuracies: list[float]):
    """Make round N's adjust report accuracies[N-1]."""
    def finish(cluster: Cluster) -> None:
        for name in cluster.active():
            pod = cluster.pods[name]
            if pod["metadata"]["labels"][STAGE_LABEL] == "adjust":
                round_ = int(pod["metadata"]["labels"][ROUND_LABEL])
                cluster.succeed(name, {"accuracy": accuracies[round_ - 1], "loss": 0.1, "seconds": 0.1})
            else:
                cluster.succeed(name)
    return finish


def run_with(cluster: Cluster, finish) -> None:
    for _ in range(100):
        cluster.reconcile()
        if cluster.status.get("phase") in ("Succeeded", "Failed"):
            return
        cluster.tick(1)
        finish(cluster)
    raise AssertionError("did not finish")


def test_target_accuracy_ends_the_task_early():
    cluster = Cluster(make_task(rounds={"max": 10, "targetAccuracy": 0.7}))
    cluster.run_to_end()
    assert [h["round"] for h in cluster.status["history"]] == [1, 2]
    succeeded = next(c for c in cluster.status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "TargetAccuracyReached"


def test_patience_ends_the_task_and_best_is_the_best_round():
    cluster = Cluster(make_task(rounds={"max": 10, "patience": 2}))
    run_with(cluster, adjust_results([0.5, 0.8, 0.7, 0.75, 0.9, 0.9]))
    status = cluster.status
    assert [h["round"] for h in status["history"]] == [1, 2, 3, 4]
    assert status["best"]["round"] == 2 and status["best"]["accuracy"] == 0.8
    assert status["model"]["round"] == 4 and status["model"]["accuracy"] == 0.75
    assert status["best"]["uri"].endswith("round-0002/global.safetensors")
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "NoImprovement"


def test_publish_to_devices_runs_one_pod_per_device_node():
    nodes = [node("edge-b"), node("edge-a"), node("server", device=False)]
    task = make_task(data={"source": "hostPath"}, devices={"count": None, "perRound": 2},
                     publish={"toDevices": True}, rounds={"max": 1})
    task["spec"]["devices"].pop("count")
    cluster = Cluster(task, devices=["edge-a", "edge-b"], nodes=nodes)
    cluster.advance_until(lambda: cluster.status.get("stage") == "Publishing", limit=10)
    assert "shardCount" not in cluster.status
    assert cluster.active() == ["mnist-publish-edge-a", "mnist-publish-edge-b"]
    published = cluster.status["published"]
    assert [(p["node"], p["state"]) for p in published] == [("edge-a", "Pending"), ("edge-b", "Pending")]
    assert cluster.status["model"]["round"] == 1 and cluster.status["phase"] == "Running"
    cluster.fail("mnist-publish-edge-b")
    cluster.reconcile()
    assert "mnist-publish-edge-b-a1" in cluster.pods
    cluster.finish_all()
    cluster.reconcile()
    assert cluster.status["phase"] == "Succeeded"
    published_event = next(e for e in cluster.events if e.reason == "ModelPublished")
    assert "copied to 2 device nodes" in published_event.message
    cluster.reconcile()
    assert cluster.pods == {}


def test_suspend_stops_pods_and_resume_continues_the_same_round():
    cluster = Cluster(make_task())
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.succeed("mnist-r0001-train-d000")
    cluster.start("mnist-r0001-train-d001")
    cluster.task["spec"]["suspend"] = True
    cluster.task["metadata"]["generation"] = 2
    plan = cluster.reconcile()
    assert plan.create == []
    assert sorted(plan.delete) == ["mnist-init", "mnist-r0001-train-d001", "mnist-r0001-train-d002"]
    status = cluster.status
    assert status["phase"] == "Suspended" and status["round"] == 1 and status["observedGeneration"] == 2
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert suspended["status"] == "True" and "suspend: false" in suspended["message"]
    assert {d["device"]: d["state"] for d in status["devices"]} == {"d000": "Succeeded", "d001": "Pending",
                                                                  "d002": "Pending"}
    assert "Suspended" in cluster.event_reasons()
    cluster.tick(600)
    plan = cluster.reconcile()
    assert plan.create == [] and plan.delete == ["mnist-r0001-train-d000"]
    cluster.task["spec"]["suspend"] = False
    plan = cluster.reconcile()
    assert cluster.status["phase"] == "Running" and cluster.status["round"] == 1
    assert sorted(p["metadata"]["name"] for p in plan.create) == train_pods(1, "d001", "d002")
    assert plan.requeue_after == 60, "the round deadline restarts at resume"
    assert next(c for c in cluster.status["conditions"] if c["type"] == "Suspended")["status"] == "False"
    cluster.run_to_end()
    assert [h["round"] for h in cluster.status["history"]] == [1, 2, 3]
    assert cluster.created.count("mnist-r0001-train-d000") == 1, "a recorded update is not trained again"


def test_suspend_records_a_result_that_arrived_and_resumes_at_the_next_stage():
    cluster = Cluster(make_task())
    cluster.advance_until(lambda: "mnist-r0001-aggregate" in cluster.pods, limit=6)
    cluster.succeed("mnist-r0001-aggregate")
    cluster.task["spec"]["suspend"] = True
    cluster.reconcile()
    assert cluster.status["current"]["state"] == "Succeeded"
    cluster.reconcile()
    assert "mnist-r0001-aggregate" not in cluster.pods
    cluster.task["spec"]["suspend"] = False
    plan = cluster.reconcile()
    assert cluster.status["stage"] == "Adjusting"
    assert [p["metadata"]["name"] for p in plan.create] == ["mnist-r0001-adjust"]
    assert cluster.created.count("mnist-r0001-aggregate") == 1


def test_active_deadline_fails_the_task_and_stops_its_pods():
    cluster = Cluster(make_task(activeDeadlineSeconds=100))
    plan = cluster.reconcile()
    assert plan.requeue_after == 100
    cluster.succeed("mnist-init")
    cluster.tick(40)
    plan = cluster.reconcile()
    assert plan.requeue_after == 60  # the deadline comes before the round timeout
    cluster.start("mnist-r0001-train-d000")
    cluster.succeed("mnist-r0001-train-d001")
    cluster.tick(60)
    plan = cluster.reconcile()
    status = cluster.status
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds=100" in failed["message"]
    assert sorted(plan.delete) == ["mnist-r0001-train-d000", "mnist-r0001-train-d002"]
    assert plan.create == []


def test_invalid_spec_fails_with_field_paths_and_no_pods():
    task = make_task(devices={"perRound": 0, "minReturned": 9})
    cluster = Cluster(task)
    plan = cluster.reconcile()
    assert plan.create == [] and cluster.status["phase"] == "Failed"
    failed = next(c for c in cluster.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.devices.perRound: must be >= 1" in failed["message"]
    assert [e.reason for e in plan.events] == ["InvalidSpec"]
    assert cluster.reconcile().events == [], "the same error is reported once"
    # fixed before it ever ran: the task starts
    cluster.task["spec"]["devices"] = {"count": 6, "perRound": 3}
    cluster.task["metadata"]["generation"] = 2
    plan = cluster.reconcile()
    assert cluster.status["phase"] == "Pending" and [p["metadata"]["name"] for p in plan.create] == ["mnist-init"]
    assert not any(c["type"] == "Failed" for c in cluster.status["conditions"])


def test_history_is_bounded_and_keeps_the_latest_rounds():
    cluster = Cluster(make_task(rounds={"max": 1000}))
    cluster.advance_until(lambda: "mnist-r0001-adjust" in cluster.pods, limit=6)
    old = [{"round": 1000 + i, "accuracy": 0.1} for i in range(HISTORY_LIMIT)]
    cluster.task["status"]["history"] = old
    cluster.succeed("mnist-r0001-adjust")
    cluster.reconcile()
    history = cluster.status["history"]
    assert len(history) == HISTORY_LIMIT >= 100
    assert history[-1]["round"] == 1 and history[0]["round"] == 1001, "the oldest entry is dropped"


# --------------------------------------------------------------------------------------------------------------------
# Crash points: the runtime may die after any step of applying a plan; the next plan must neither lose nor repeat.


def reference_run(task: dict) -> Cluster:
    cluster = Cluster(task)
    cluster.run_to_end()
    return cluster


@pytest.mark.parametrize("crash_after", ["start", "write_status", "create_pods", "delete_pods"])
def test_a_crash_at_any_step_neither_loses_nor_repeats_a_round(crash_after):
    task = make_task(devices={"count": 4, "perRound": 2}, rounds={"max": 2})
    reference = reference_run(task)
    steps = len(reference.plans)
    for crash_at in range(steps):
        cluster = Cluster(task)
        for step in range(100):
            plan = cluster.next_plan()
            if step == crash_at:  # the runtime dies part-way through applying this plan, then restarts
                cluster.apply(plan, crash_after=crash_after)
            else:
                cluster.apply(plan)
            if cluster.status.get("phase") == "Succeeded":
                break
            cluster.tick(1)
            cluster.finish_all()
        cluster.reconcile()
        assert cluster.status["phase"] == "Succeeded", (crash_at, cluster.status)
        assert [h["round"] for h in cluster.status["history"]] == [1, 2], crash_at
        assert len(cluster.created) == len(set(cluster.created)), f"a pod ran twice after a crash at {crash_at}"
        assert sorted(cluster.created) == sorted(reference.created), crash_at
        assert cluster.pods == {}
        assert [h["returned"] for h in cluster.status["history"]] == \
            [h["returned"] for h in reference.status["history"]]


def restarted(cluster: Cluster) -> Cluster:
    """A new runtime process: nothing survives but the task object and the pods."""
    fresh = Cluster(cluster.task)
    fresh.pods = copy.deepcopy(cluster.pods)
    fresh.now = cluster.now
    return fresh


def test_restart_during_training_adopts_the_running_pods():
    cluster = Cluster(make_task())
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.reconcile()  # clean-up of the init pod
    cluster.start("mnist-r0001-train-d000")
    cluster.succeed("mnist-r0001-train-d001")
    fresh = restarted(cluster)
    plan = fresh.reconcile()
    assert plan.create == [] and plan.delete == [] and fresh.schedule_calls == 0
    assert fresh.status["round"] == 1 and fresh.status["stage"] == "Training"
    assert [d["state"] for d in fresh.status["devices"]] == ["Running", "Succeeded", "Pending"]


def test_restart_records_an_aggregate_result_that_arrived_while_down():
    cluster = Cluster(make_task())
    cluster.advance_until(lambda: "mnist-r0001-aggregate" in cluster.pods, limit=6)
    cluster.succeed("mnist-r0001-aggregate")
    fresh = restarted(cluster)
    plan = fresh.reconcile()
    assert fresh.status["stage"] == "Adjusting"
    assert fresh.status["currentRound"]["aggregateSeconds"] >= 0
    assert [p["metadata"]["name"] for p in plan.create] == ["mnist-r0001-adjust"]
    assert "mnist-r0001-aggregate" not in plan.delete
    plan = fresh.reconcile()
    assert plan.delete == ["mnist-r0001-aggregate"] and plan.create == []


def test_pods_of_an_older_round_and_orphans_are_deleted_and_ignored():
    cluster = Cluster(make_task())
    cluster.advance_until(lambda: (cluster.status.get("round"), cluster.status.get("stage")) == (2, "Training"),
                          limit=12)
    cluster.reconcile()  # the clean-up of round 1's adjust pod
    history = copy.deepcopy(cluster.status["history"])
    stale = copy.deepcopy(cluster.pods["mnist-r0002-train-d003"])
    stale["metadata"]["name"] = "mnist-r0001-train-d005"
    stale["metadata"]["labels"]["fedtask.io/round"] = "1"
    stale["status"] = {"phase": "Running"}
    orphan = copy.deepcopy(stale)
    orphan["metadata"]["name"] = "mnist-r0002-train-d000"
    cluster.pods[stale["metadata"]["name"]] = stale
    cluster.pods[orphan["metadata"]["name"]] = orphan
    cluster.succeed("mnist-r0001-train-d005")  # even a finished one: round 1 is recorded already
    plan = cluster.reconcile()
    assert sorted(plan.delete) == ["mnist-r0001-train-d005", "mnist-r0002-train-d000"]
    assert plan.create == [] and cluster.status["history"] == history
    assert [d["device"] for d in cluster.status["devices"]] == ["d003", "d004", "d005"]


def test_a_pod_being_deleted_is_recreated_only_once_it_is_gone():
    cluster = Cluster(make_task())
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    del cluster.pods["mnist-r0001-train-d000"]  # deleted by someone else: recreated under the same name
    plan = cluster.reconcile()
    assert [p["metadata"]["name"] for p in plan.create] == ["mnist-r0001-train-d000"]
    cluster.pods["mnist-r0001-train-d001"]["metadata"]["deletionTimestamp"] = "2026-11-28T05:00:00Z"
    plan = cluster.reconcile()
    assert plan.create == [] and plan.delete == [] and plan.requeue_after == 1.0


def test_a_retry_and_a_replacement_in_one_pass():
    cluster = Cluster(make_task(podRetryLimit=1))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.fail("mnist-r0001-train-d000")  # retried
    cluster.fail("mnist-r0001-train-d001", exit_code=2)  # replaced
    plan = cluster.reconcile()
    assert sorted(p["metadata"]["name"] for p in plan.create) == ["mnist-r0001-train-d000-a1",
                                                                  "mnist-r0001-train-d003"]


def test_every_state_reaches_a_fixpoint_quickly():
    """Runtimes reconcile until nothing changes: with no pod changes, the plans must settle within three passes."""
    cluster = Cluster(make_task(devices={"minReturned": 2}))
    for step in range(60):
        passes = 0
        while True:
            before = copy.deepcopy(cluster.status)
            plan = cluster.reconcile()
            passes += 1
            if not plan.create and not plan.delete and cluster.status == before:
                break
            assert passes < 3, (step, cluster.status.get("stage"), plan.create, plan.delete)
            cluster.tick(0.25)
        if cluster.status.get("phase") == "Succeeded":
            return
        cluster.tick(1)
        names = cluster.active()
        if names:  # one pod at a time, alternating start and finish
            if step % 2:
                cluster.succeed(names[0])
            else:
                cluster.start(names[0])
    raise AssertionError("did not finish")


def test_ttl_after_finished_asks_the_runtime_to_delete_the_task():
    cluster = Cluster(make_task(rounds={"max": 1}, ttlSecondsAfterFinished=30))
    cluster.run_to_end()
    plan = cluster.reconcile()
    assert not plan.delete_task and plan.requeue_after == 30
    cluster.tick(30)
    assert cluster.reconcile().delete_task and cluster.task_deleted
    assert not Cluster(make_task(rounds={"max": 1})).reconcile().delete_task


# --------------------------------------------------------------------------------------------------------------------
# Random histories: whatever pods do, when, and however often the runtime restarts, the invariants hold.

ACTIONS = st.lists(st.tuples(st.sampled_from(["succeed", "fail", "bad-input", "start", "tick", "long-tick",
                                              "suspend", "resume", "restart", "crash", "fleet-busy",
                                              "fleet-free"]),
                             st.integers(min_value=0, max_value=5)), max_size=40)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS)
def test_random_histories_keep_the_invariants(actions):
    cluster = Cluster(make_task(devices={"count": 5, "perRound": 3, "minReturned": 2}, rounds={"max": 3},
                                podRetryLimit=1))
    recreatable: set[str] = set()  # pods deleted while running (suspend, stragglers) may be created again
    seen_created = 0

    def check_creations():
        nonlocal seen_created
        for name in cluster.created[seen_created:]:
            assert cluster.created[:seen_created].count(name) == 0 or name in recreatable, name
            seen_created += 1

    def reconcile():
        active_before = set(cluster.active())
        plan = cluster.reconcile()
        recreatable.update(set(plan.delete) & active_before)
        check_creations()

    for action, index in actions:
        if cluster.status.get("phase") in ("Succeeded", "Failed"):
            break
        names = cluster.active()
        name = names[index % len(names)] if names else None
        if action == "succeed" and name:
            cluster.succeed(name)
        elif action == "fail" and name:
            cluster.fail(name)
        elif action == "bad-input" and name:
            cluster.fail(name, exit_code=2)
        elif action == "start" and name:
            cluster.start(name)
        elif action == "tick":
            cluster.tick(5)
        elif action == "long-tick":
            cluster.tick(61)
        elif action in ("suspend", "resume"):
            cluster.task["spec"]["suspend"] = action == "suspend"
        elif action == "fleet-busy":  # other work holds every device: no replacements, rounds wait
            cluster.free_devices = []
        elif action == "fleet-free":
            cluster.free_devices = None
        elif action == "crash":  # the runtime dies after patching the status, before touching pods
            cluster.apply(cluster.next_plan(), crash_after="write_status")
            continue
        elif action == "restart":
            cluster = restarted_keeping_log(cluster)
        reconcile()
    cluster.task["spec"]["suspend"] = False
    cluster.free_devices = None
    for _ in range(80):  # from now on every pod succeeds
        reconcile()
        if cluster.status.get("phase") in ("Succeeded", "Failed"):
            break
        cluster.tick(1)
        cluster.finish_all()
    reconcile()
    status = cluster.status
    assert status["phase"] in ("Succeeded", "Failed"), status
    rounds = [h["round"] for h in status.get("history") or []]
    assert rounds == list(range(1, len(rounds) + 1)), "no round lost or repeated"
    for entry in status.get("history") or []:
        assert len(entry["returned"]) >= 2 and set(entry["returned"]) <= set(entry["devices"])
    if status["phase"] == "Succeeded":
        assert rounds == [1, 2, 3] and cluster.pods == {}
        assert status["model"]["round"] == 3
    else:
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] in ("QuorumNotReached", "StageFailed", "PodRetryLimitExceeded"), failed


def restarted_keeping_log(cluster: Cluster) -> Cluster:
    fresh = restarted(cluster)
    fresh.free_devices = cluster.free_devices
    fresh.created, fresh.deleted, fresh.events = cluster.created, cluster.deleted, cluster.events
    return fresh


def test_a_large_round_keeps_messages_short():
    cluster = Cluster(make_task(devices={"count": 400, "perRound": 300}, rounds={"max": 1}))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    plan = cluster.reconcile()
    assert len(plan.create) == 300
    started = next(e for e in cluster.events if e.reason == "RoundStarted")
    assert started.message.endswith("... (290 more)") and len(started.message) < 200


def terminated(phase: str, exit_code: int, message: str) -> dict:
    return {"metadata": {"name": "p"}, "status": {"phase": phase, "containerStatuses": [
        {"state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}}}]}}


def test_observe_pod_reads_results_and_failures():
    assert observe_pod(None).state == "Missing"
    assert observe_pod({"metadata": {"name": "p"}}).state == "Pending"
    assert observe_pod({"metadata": {"name": "p", "deletionTimestamp": "x"}, "status": {"phase": "Running"}}
                       ).state == "Terminating"
    ok = observe_pod(terminated("Succeeded", 0, '{"accuracy": 0.9}'))
    assert (ok.state, ok.result) == ("Succeeded", {"accuracy": 0.9})
    no_result = observe_pod(terminated("Succeeded", 0, "done"))
    assert no_result.state == "Failed" and "no JSON result" in no_result.reason
    bad_input = observe_pod(terminated("Failed", 2, '{"error": "spec.model.name: unknown model \'x\'"}'))
    assert not bad_input.retryable and bad_input.reason == "exit code 2: Error: spec.model.name: unknown model 'x'"
    crashed = observe_pod(terminated("Failed", 1, "Traceback (most recent call last):\n  ...\nMemoryError: big"))
    assert crashed.retryable and crashed.reason == "exit code 1: Error: MemoryError: big"
    evicted = observe_pod({"metadata": {"name": "p"}, "status": {
        "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}})
    assert evicted.retryable and evicted.reason == "Evicted: The node was low on resource: memory."


def test_active_deadline_stops_while_suspended_and_restarts_at_resume():
    cluster = Cluster(make_task(activeDeadlineSeconds=100))
    cluster.reconcile()
    cluster.tick(50)
    cluster.task["spec"]["suspend"] = True
    assert cluster.reconcile().requeue_after is None
    cluster.tick(500)
    cluster.reconcile()
    assert cluster.status["phase"] == "Suspended"
    cluster.task["spec"]["suspend"] = False
    plan = cluster.reconcile()
    assert cluster.status["phase"] == "Pending" and plan.requeue_after == 100
    assert [p["metadata"]["name"] for p in plan.create] == ["mnist-init"]
    cluster.tick(100)
    cluster.reconcile()
    assert cluster.status["phase"] == "Failed"


def test_a_pod_that_cannot_start_stalls_the_task_with_a_hint():
    cluster = Cluster(make_task())
    cluster.reconcile()
    cluster.pods["mnist-init"]["status"] = {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"fedtask-worker:typo\""}}}]}
    cluster.reconcile()
    stalled = next(c for c in cluster.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "PodNotStarting"
    assert "pod mnist-init: ImagePullBackOff: Back-off pulling image" in stalled["message"]
    assert "spec.image" in stalled["message"]
    cluster.reconcile()
    assert cluster.event_reasons().count("PodNotStarting") == 1
    cluster.start("mnist-init")
    cluster.reconcile()
    assert not any(c["type"] == "Stalled" for c in cluster.status["conditions"])
    unschedulable_pod = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                             "reason": "Unschedulable",
                                                             "message": "0/3 nodes: Insufficient memory"}]}
    cluster.pods["mnist-init"]["status"] = unschedulable_pod
    cluster.reconcile()
    stalled = next(c for c in cluster.status["conditions"] if c["type"] == "Stalled")
    assert "Unschedulable: 0/3 nodes: Insufficient memory" in stalled["message"]


def test_nonsense_in_worker_results_never_reaches_the_status():
    cluster = Cluster(make_task(rounds={"max": 1}))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    cluster.succeed("mnist-r0001-train-d000", {"num_samples": "many", "loss": float("nan"), "seconds": "slow"})
    cluster.succeed("mnist-r0001-train-d001", {"num_samples": float("inf"), "seconds": -1})
    cluster.succeed("mnist-r0001-train-d002", {"num_samples": 40, "seconds": 1.5})
    cluster.reconcile()
    assert cluster.status["currentRound"]["samples"] == 40
    json.dumps(cluster.status, allow_nan=False)
    assert cluster.status["trainSecondsEstimate"] == {"d002": 1.5}
    cluster.succeed("mnist-r0001-aggregate")
    cluster.reconcile()
    cluster.succeed("mnist-r0001-adjust", {"accuracy": float("nan"), "loss": float("inf"), "seconds": 1})
    cluster.reconcile()
    record = cluster.status["history"][0]
    assert "accuracy" not in record and "loss" not in record
    assert cluster.status["phase"] == "Succeeded" and "accuracy" not in cluster.status["model"]
    json.dumps(cluster.status, allow_nan=False)


def test_a_request_the_scheduler_cannot_read_fails_that_task_alone():
    """Issue 12: `cpu: 1e99` passes the CRD's quantity pattern but no scheduler can read it; the one decision over
    both tasks (the real `select_devices`) rejects that task with InvalidSpec naming the field, the other trains."""
    from fedtask_operator.core.scheduling import select_devices
    from fedtask_operator.core.scheduling.synthetic import make_node

    bad = Cluster(make_task("bad", devices={"count": 6, "perRound": 3, "resources": {"requests": {"cpu": "1e99"}}}))
    good = Cluster(make_task("good"))
    for cluster in (bad, good):
        cluster.reconcile()
        cluster.succeed(f"{cluster.task['metadata']['name']}-init")
    plans = {c.task["metadata"]["name"]: (c, c.plan()) for c in (bad, good)}
    assert all(plan.needs_devices for _, plan in plans.values())
    nodes = [make_node(f"n{i}") for i in range(6)]
    decision = select_devices([plan.device_request for _, plan in plans.values()], nodes, [])
    for cluster, plan in plans.values():
        cluster.apply(cluster.plan(decision.tasks[plan.device_request.task]))
    condition = next(c for c in bad.status["conditions"] if c["type"] == "Unschedulable")
    assert condition["status"] == "True" and condition["reason"] == "InvalidSpec"
    assert "spec.devices.resources.requests.cpu: invalid quantity '1e99': exponent out of range" in \
        condition["message"]
    assert "DeviceUnschedulable" in bad.event_reasons() and bad.status["stage"] == "Scheduling"
    assert good.status["stage"] == "Training" and len(good.active("train")) == 3


def test_every_pod_of_a_whole_task_carries_the_pod_template_and_server_pods_spec_server():
    template = {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "q"},
                             "annotations": {"sidecar.istio.io/inject": "false"}},
                "schedulerName": "volcano", "env": [{"name": "PYTHONPATH", "value": "/code"}],
                "volumes": [{"name": "code", "configMap": {"name": "code"}}],
                "volumeMounts": [{"name": "code", "mountPath": "/code"}]}
    server = {"resources": {"requests": {"cpu": "2"}}, "nodeSelector": {"role": "server"},
              "tolerations": [{"key": "server", "operator": "Exists"}]}
    volcano = replace(CONFIG, confinement=Confinement(allowed_scheduler_names=("volcano",)))  # issue 12: listed
    cluster = Cluster(make_task(podTemplate=template, server=server, publish={"toDevices": True}), config=volcano)
    cluster.run_to_end()
    assert cluster.status["phase"] == "Succeeded"

    created = [pod for plan in cluster.plans for pod in plan.create]
    assert len(created) == len(cluster.created) > 10
    stages = set()
    for pod in created:
        stage = pod["metadata"]["labels"][STAGE_LABEL]
        stages.add(stage)
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
        assert pod["metadata"]["labels"]["fedtask.io/task"] == "mnist"
        assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        spec = pod["spec"]
        container = spec["containers"][0]
        assert spec["schedulerName"] == "volcano"
        assert {"name": "code", "configMap": {"name": "code", "optional": False}} in spec["volumes"]
        assert {"name": "code", "mountPath": "/code"} in container["volumeMounts"]
        assert {"name": "PYTHONPATH", "value": "/code"} in container["env"]
        server_side = stage in ("init", "aggregate", "adjust")
        assert spec.get("nodeSelector") == ({"role": "server"} if server_side else None), pod["metadata"]["name"]
        assert (spec.get("tolerations") == [{"operator": "Exists", "key": "server"}]) == server_side
        assert (container["resources"] == {"requests": {"cpu": "2"}}) == server_side
    assert stages == {"init", "train", "aggregate", "adjust", "publish"}


def test_the_validation_split_decides_and_the_test_split_is_reported():
    """targetAccuracy, patience and best go by validation_accuracy; status.accuracy is the test split's, and
    status.evaluation says which is which."""
    reported = {1: (0.5, 0.9), 2: (0.8, 0.6), 3: (0.75, 0.65)}  # round: (validation, test)

    def finish(cluster: Cluster) -> None:
        for name in cluster.active():
            pod = cluster.pods[name]
            if pod["metadata"]["labels"][STAGE_LABEL] == "adjust":
                validation, test = reported[int(pod["metadata"]["labels"][ROUND_LABEL])]
                cluster.succeed(name, {"accuracy": test, "loss": 0.2, "validation_accuracy": validation,
                                       "validation_loss": 0.1, "test_split": "test", "test_samples": 10000,
                                       "validation_samples": 5000, "seconds": 0.1})
            else:
                cluster.succeed(name)

    cluster = Cluster(make_task(rounds={"max": 10, "patience": 1, "targetAccuracy": 0.85}))
    run_with(cluster, finish)
    status = cluster.status
    # round 1's test accuracy 0.9 passes the target, its validation accuracy 0.5 does not; round 3 is no better
    # than round 2 on validation, so patience (1) ends the task there
    assert [(h["validationAccuracy"], h["accuracy"]) for h in status["history"]] == [(0.5, 0.9), (0.8, 0.6),
                                                                                      (0.75, 0.65)]
    assert status["history"][0]["validationLoss"] == 0.1 and status["history"][0]["loss"] == 0.2
    assert (status["accuracy"], status["validationAccuracy"]) == (0.65, 0.75)
    assert status["best"] == {"uri": status["history"][1]["uri"], "round": 2, "accuracy": 0.6,
                              "validationAccuracy": 0.8}
    assert status["model"]["round"] == 3 and status["model"]["validationAccuracy"] == 0.75
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "NoImprovement" and "validation accuracy 0.8000" in succeeded["message"]
    assert status["evaluation"].startswith("accuracy: the test split (10000 samples), reported only; "
                                           "validationAccuracy: the validation split (5000 samples")


def test_target_accuracy_is_reached_on_the_validation_split():
    def finish(cluster: Cluster) -> None:
        for name in cluster.active():
            if cluster.pods[name]["metadata"]["labels"][STAGE_LABEL] == "adjust":
                cluster.succeed(name, {"accuracy": 0.1, "validation_accuracy": 0.9, "test_split": "validation",
                                       "test_samples": 300, "validation_samples": 300})
            else:
                cluster.succeed(name)

    cluster = Cluster(make_task(rounds={"max": 10, "targetAccuracy": 0.85}))
    run_with(cluster, finish)
    succeeded = next(c for c in cluster.status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "TargetAccuracyReached" and len(cluster.status["history"]) == 1
    assert "validation accuracy 0.9000 reached" in succeeded["message"]
    assert "the dataset has no test split of its own" in cluster.status["evaluation"]
