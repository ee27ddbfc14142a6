"""Faults the planner rides out: a store outage (the worker's exit 3) is retried on its own backoff and budget, not
against spec.podRetryLimit; server-side stages and rounds below quorum have deadlines; pods on lost nodes are given
up after a grace period."""
from __future__ import annotations

from datetime import timedelta

import pytest

from fedtask_operator.core.compaction import compact, round_devices
from fedtask_operator.core.scheduling.collection import SchedulingConfig, decide_period
from fedtask_operator.core.scheduling.types import TaskAssignment
from fedtask_operator.core.spec import SpecError, parse_task
from tests.support.planner import T0, Cluster, make_task, node, train_pods

STORE_DOWN = "s3://fedtask/x: read still failing after 60 s of retries: ConnectionRefusedError"


def in_training(**spec) -> Cluster:
    cluster = Cluster(make_task(**spec))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    return cluster


def condition(cluster: Cluster, type_: str) -> dict:
    return next(c for c in cluster.status["conditions"] if c["type"] == type_)


def test_store_outage_exits_are_retried_after_a_backoff_not_against_pod_retry_limit():
    cluster = in_training(podRetryLimit=1, rounds={"max": 3, "timeoutSeconds": 3600})
    pod = train_pods(1, "d000")[0]
    created_at = []
    for outage in range(4):  # four outages in a row: podRetryLimit 1 would have failed the device at the second
        current = next(d for d in cluster.status["devices"] if d["device"] == "d000")["pod"]
        cluster.fail(current, exit_code=3, message=STORE_DOWN)
        plan = cluster.reconcile()
        record = next(d for d in cluster.status["devices"] if d["device"] == "d000")
        assert record["state"] == "Pending" and record["outages"] == outage + 1 and record["attempts"] == outage + 1
        assert record["pod"] == f"{pod}-a{outage + 1}" and record["pod"] not in [m["metadata"]["name"]
                                                                              for m in plan.create]
        wait = plan.requeue_after
        low = 5.0 * 2 ** outage * 0.5
        assert low <= wait <= min(5.0 * 2 ** outage, 60.0) * 1.5, (outage, wait)
        cluster.tick(wait - 0.5)
        assert record["pod"] not in [m["metadata"]["name"] for m in cluster.reconcile().create], "not before"
        cluster.tick(0.5)
        assert record["pod"] in [m["metadata"]["name"] for m in cluster.reconcile().create]
        created_at.append(cluster.now)
    assert "StoreUnavailable" in cluster.event_reasons()
    # a real failure after the outages still has its one retry (podRetryLimit counts real failures only)
    current = next(d for d in cluster.status["devices"] if d["device"] == "d000")["pod"]
    cluster.fail(current)
    plan = cluster.reconcile()
    record = next(d for d in cluster.status["devices"] if d["device"] == "d000")
    assert record["state"] == "Pending" and record["attempts"] == 5 and plan.create, "retried at once, as before"
    cluster.fail(record["pod"])
    cluster.reconcile()
    record = next(d for d in cluster.status["devices"] if d["device"] == "d000")
    assert record["state"] == "Failed" and "podRetryLimit 1 reached" in record["reason"]


def test_a_store_outage_beyond_the_budget_fails_the_stage_with_store_unavailable():
    cluster = in_training(podRetryLimit=3, storeOutageSeconds=120)
    cluster.finish_all("train")
    cluster.reconcile()  # -> aggregating: the aggregate pod
    name = "mnist-r0001-aggregate"
    for _ in range(20):
        if cluster.status.get("phase") == "Failed":
            break
        current = cluster.status["current"]["pod"]
        if current in cluster.pods:
            cluster.fail(current, exit_code=3, message=STORE_DOWN)
        plan = cluster.reconcile()
        cluster.tick(plan.requeue_after or 1)
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "StoreUnavailable", failed
    assert "spec.storeOutageSeconds=120" in failed["message"] and name in failed["message"]
    outages = cluster.status["current"]["outages"]
    assert outages >= 4, "more exits than podRetryLimit 3 were survived before the budget ran out"


def test_outage_fields_survive_packing():
    start = T0.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    later = (T0 + timedelta(seconds=12.5)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    devices = [{"device": f"d{i:04d}", "node": "n", "pod": f"t-r0002-train-d{i:04d}-a2", "state": "Pending",
                "attempts": 2, "startTime": start, "outages": 2, "outageSince": start, "retryAfter": later}
               for i in range(150)]
    status = compact({"round": 2, "roundStartTime": start, "devices": [dict(d) for d in devices]})
    assert "deviceRows" in status and round_devices(status, "t") == devices


# ---- deadlines and lost nodes


def test_a_server_stage_past_its_deadline_is_replaced_then_fails_with_stage_deadline_exceeded():
    cluster = in_training(podRetryLimit=1, stageTimeoutSeconds=300)
    cluster.finish_all("train")
    cluster.reconcile()
    cluster.start("mnist-r0001-aggregate")
    cluster.tick(299)
    assert not cluster.reconcile().create, "not before the deadline"
    cluster.tick(1)
    plan = cluster.reconcile()
    assert [m["metadata"]["name"] for m in plan.create] == ["mnist-r0001-aggregate-a1"]
    assert cluster.status["current"]["attempts"] == 1
    cluster.reconcile()
    assert "mnist-r0001-aggregate" in cluster.deleted, "the overdue pod is deleted once it is replaced"
    cluster.start("mnist-r0001-aggregate-a1")
    cluster.tick(300)
    cluster.reconcile()
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "StageDeadlineExceeded" and "stageTimeoutSeconds=300" in failed["message"], failed


@pytest.mark.parametrize("quorum_timeout, gives_up_at", [(None, 120), (75, 75), (600, 600)])
def test_a_round_below_quorum_waits_for_running_devices_until_the_quorum_timeout_then_fails(quorum_timeout,
                                                                                           gives_up_at):
    rounds = {"max": 3, "timeoutSeconds": 60}
    if quorum_timeout is not None:
        rounds["quorumTimeoutSeconds"] = quorum_timeout
    cluster = in_training(rounds=rounds)
    first, *others = cluster.active("train")
    cluster.succeed(first)
    for name in others:
        cluster.start(name)
    cluster.tick(61)
    plan = cluster.reconcile()
    assert condition(cluster, "Stalled")["reason"] == "QuorumNotReached" and cluster.status["phase"] == "Running"
    assert plan.requeue_after == pytest.approx(gives_up_at - 61, abs=0.01), "woken when the quorum wait ends"
    cluster.tick(gives_up_at - 61 - 1)
    cluster.reconcile()
    assert cluster.status["phase"] == "Running", "not before rounds.quorumTimeoutSeconds"
    cluster.tick(1)
    cluster.reconcile()
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "QuorumNotReached" and cluster.status["phase"] == "Failed"
    named = ("rounds.quorumTimeoutSeconds (default: twice rounds.timeoutSeconds=60)" if quorum_timeout is None
             else f"rounds.quorumTimeoutSeconds={quorum_timeout}")
    assert named in failed["message"], failed["message"]


@pytest.mark.parametrize("spec, path, words", [
    ({"rounds": {"timeoutSeconds": 60, "quorumTimeoutSeconds": 59}}, "spec.rounds.quorumTimeoutSeconds",
     "must be >= rounds.timeoutSeconds"),
    ({"rounds": {"quorumTimeoutSeconds": 0}}, "spec.rounds.quorumTimeoutSeconds", ">= 1"),
    ({"nodeLostGraceSeconds": -1}, "spec.nodeLostGraceSeconds", ">= 0"),
    ({"nodeLostGraceSeconds": 86401}, "spec.nodeLostGraceSeconds", "<= 86400"),
    ({"nodeLostGraceSeconds": "2m"}, "spec.nodeLostGraceSeconds", "integer"),
])
def test_fault_times_out_of_bounds_are_refused_naming_the_field(spec, path, words):
    with pytest.raises(SpecError) as raised:
        parse_task(make_task(**spec))
    errors = [e for e in raised.value.errors if e.path == path]
    assert errors and words in errors[0].message, raised.value.errors
    cluster = Cluster(make_task(**spec))
    cluster.reconcile()
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "InvalidSpec" and path in failed["message"] and not cluster.pods


def test_fault_times_default_to_the_documented_values():
    spec = parse_task(make_task()).spec
    assert spec.node_lost_grace_seconds == 120 and spec.rounds.quorum_timeout_seconds is None
    assert spec.rounds.quorum_timeout == 2 * spec.rounds.timeout_seconds


def not_ready(name: str, since) -> dict:
    node_object = node(name)
    node_object["status"] = {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                             "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]}
    return node_object


@pytest.mark.parametrize("grace", [None, 30, 0])
def test_a_train_pod_on_a_node_notready_past_the_grace_period_fails_its_device_which_is_replaced(grace):
    names = [f"n{i}" for i in range(4)]
    task = make_task(data={"dataset": "digits", "source": "hostPath", "hostPath": "/var/lib/fedtask"},
                     devices={"perRound": 2, "minReturned": 2}, rounds={"max": 1, "timeoutSeconds": 3600},
                     **({} if grace is None else {"nodeLostGraceSeconds": grace}))
    grace_seconds = 120 if grace is None else grace
    del task["spec"]["devices"]["count"]  # node devices: every matching node is one
    cluster = Cluster(task, devices=names, nodes=[node(n) for n in names])
    cluster.free_devices = names[:2]
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    lost_device = cluster.status["devices"][0]
    pod = lost_device["pod"]
    cluster.start(pod)
    cluster.nodes = [not_ready(n, cluster.now) if n == lost_device["node"] else node(n) for n in names]
    if grace_seconds:
        cluster.tick(grace_seconds - 1)
        plan = cluster.reconcile()
        assert not plan.create and plan.requeue_after is not None and plan.requeue_after <= 1.001, "within the grace"
        assert next(d for d in cluster.status["devices"] if d["pod"] == pod)["state"] == "Running"
        cluster.tick(1)
    cluster.free_devices = names[2:]
    cluster.reconcile()
    record = next(d for d in cluster.status["devices"] if d["pod"] == pod)
    assert record["state"] == "Failed" and "NotReady" in record["reason"] and "not retried" in record["reason"]
    assert f"spec.nodeLostGraceSeconds={grace_seconds}" in record["reason"]
    assert "NodeLost" in cluster.event_reasons() and "DeviceReplaced" in cluster.event_reasons()
    assert len(cluster.status["devices"]) == 3 and cluster.status["devices"][-1]["node"] in names[2:]


def test_a_stage_pod_on_a_deleted_node_is_replaced_even_while_terminating():
    cluster = in_training(podRetryLimit=2)
    cluster.nodes = [node("node-0"), node("node-1")]
    cluster.finish_all("train")
    cluster.reconcile()
    pod = cluster.pods["mnist-r0001-aggregate"]
    pod["spec"]["nodeName"] = "gone"
    pod["metadata"]["deletionTimestamp"] = "2026-11-28T05:00:00Z"  # stuck Terminating: its kubelet is gone
    plan = cluster.reconcile()
    assert [m["metadata"]["name"] for m in plan.create] == ["mnist-r0001-aggregate-a1"]
    assert any(e.reason == "NodeLost" and "gone was deleted" in e.message for e in cluster.events)


def test_unreadable_device_rows_fail_the_task_with_a_clear_message_and_stop_its_pods():
    cluster = in_training(devices={"count": 200, "perRound": 150})
    assert "deviceRows" in cluster.status
    running = cluster.active("train")
    cluster.task["status"]["deviceRows"][3] = "d003 0 Q9 garbage"
    cluster.apply(cluster.plan())  # not reconcile(): its checks read the stored rows themselves
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "StatusUnreadable" and "status.deviceRows" in failed["message"]
    assert "d003 0 Q9 garbage" in failed["message"] and "recreate the task" in failed["message"]
    assert set(running) <= set(cluster.deleted)


# ---- publish pods have the stage deadline too


def publishing(**spec) -> Cluster:
    nodes = [node("edge-a"), node("edge-b"), node("server", device=False)]
    task = make_task(data={"source": "hostPath"}, devices={"perRound": 2}, publish={"toDevices": True},
                     rounds={"max": 1}, **spec)
    task["spec"]["devices"].pop("count")
    cluster = Cluster(task, devices=["edge-a", "edge-b"], nodes=nodes)
    cluster.advance_until(lambda: cluster.status.get("stage") == "Publishing", limit=10)
    return cluster


def test_a_publish_pod_past_the_stage_deadline_is_replaced_then_fails_with_stage_deadline_exceeded():
    cluster = publishing(podRetryLimit=1, stageTimeoutSeconds=300)
    assert all(p["startTime"] for p in cluster.status["published"])
    first_start = next(p for p in cluster.status["published"] if p["node"] == "edge-b")["startTime"]
    cluster.succeed("mnist-publish-edge-a")
    cluster.start("mnist-publish-edge-b")
    cluster.tick(299)
    assert not cluster.reconcile().create, "not before the deadline"
    cluster.tick(1)
    plan = cluster.reconcile()
    assert [m["metadata"]["name"] for m in plan.create] == ["mnist-publish-edge-b-a1"]
    record = next(p for p in cluster.status["published"] if p["node"] == "edge-b")
    assert record["attempts"] == 1 and record["startTime"] > first_start
    assert "PodFailed" in cluster.event_reasons()
    cluster.start("mnist-publish-edge-b-a1")
    cluster.tick(299)
    cluster.reconcile()
    assert cluster.status["phase"] == "Running", "the retry has its own deadline, from its own creation"
    cluster.tick(1)
    cluster.reconcile()
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "StageDeadlineExceeded", failed
    assert "stageTimeoutSeconds=300" in failed["message"] and "edge-b" in failed["message"], failed
    assert "PublishFailed" in cluster.event_reasons()


def test_a_publish_pod_that_finishes_in_time_is_not_replaced():
    cluster = publishing(podRetryLimit=1, stageTimeoutSeconds=300)
    cluster.start("mnist-publish-edge-b")
    cluster.succeed("mnist-publish-edge-a")
    cluster.tick(299)
    cluster.succeed("mnist-publish-edge-b")
    cluster.reconcile()
    assert cluster.status["phase"] == "Succeeded" and "PodFailed" not in cluster.event_reasons()


def test_a_publish_record_written_without_a_start_time_gets_its_deadline_from_the_first_pass_that_sees_it():
    cluster = publishing(podRetryLimit=0, stageTimeoutSeconds=60)
    for record in cluster.task["status"]["published"]:
        del record["startTime"]  # as an operator before publish deadlines wrote it
    cluster.tick(1000)
    cluster.start("mnist-publish-edge-a")
    cluster.start("mnist-publish-edge-b")
    cluster.reconcile()
    assert cluster.status["phase"] == "Running", "the deadline counts from when the record is first seen"
    cluster.tick(60)
    cluster.reconcile()
    assert condition(cluster, "Failed")["reason"] == "StageDeadlineExceeded"


def test_a_publish_pod_on_a_lost_node_is_replaced_after_the_grace():
    cluster = publishing(podRetryLimit=1, nodeLostGraceSeconds=10)
    cluster.start("mnist-publish-edge-b")
    cluster.succeed("mnist-publish-edge-a")
    cluster.nodes = [node("edge-a"), not_ready("edge-b", cluster.now), node("server", device=False)]
    cluster.tick(9)
    assert not cluster.reconcile().create, "within the grace"
    cluster.tick(1)
    plan = cluster.reconcile()
    assert [m["metadata"]["name"] for m in plan.create] == ["mnist-publish-edge-b-a1"]
    assert any(e.reason == "NodeLost" and "nodeLostGraceSeconds=10" in e.message for e in cluster.events)


# ---- replacements come from the real scheduler, never from the devices already in the round


class RealScheduler(Cluster):
    """The simulator with the operator's own scheduler (decide_period) instead of the test double, which leaves
    this round's devices out by itself."""

    def schedule(self, request) -> TaskAssignment:
        self.requests.append(request)
        decision = decide_period([request], self.nodes, list(self.pods.values()), self.now.timestamp() + 3600,
                                 active=[request.task], config=SchedulingConfig(), period=len(self.requests))
        assert decision.due
        return decision.assignment.tasks[request.task]


def fleet_node(name: str, ready: bool = True) -> dict:
    allocatable = {"cpu": "2", "memory": "8Gi", "pods": "110"}
    return {**node(name), "spec": {},
            "status": {"allocatable": allocatable, "capacity": allocatable,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown",
                                       "lastTransitionTime": "2026-11-28T04:00:00Z"}]}}


def test_a_lost_shard_is_replaced_by_a_device_outside_the_round_even_when_the_other_one_finished():
    """Round 2 trains d002 and d003; d003 finishes, then d002's node is deleted. The replacement request excludes
    both: before, the scheduler offered the finished d003 (as fast and as fair as any), the planner dropped it (it is
    in the round) and the round failed with QuorumNotReached although d000 and d001 were free."""
    names = [f"dev-{i}" for i in range(4)]
    cluster = RealScheduler(make_task(devices={"count": 4, "perRound": 2, "minReturned": 2},
                                      rounds={"max": 3, "timeoutSeconds": 600}),
                            nodes=[fleet_node(n) for n in names])
    cluster.advance_until(lambda: cluster.status.get("round") == 2 and cluster.status.get("stage") == "Training", 20)
    victim, survivor = cluster.status["devices"]
    cluster.succeed(survivor["pod"], {"num_samples": 100, "loss": 0.5, "seconds": 0.5, "bytes": 1000})  # the fastest
    cluster.reconcile()
    cluster.nodes = [n for n in cluster.nodes if n["metadata"]["name"] != victim["node"]]
    cluster.reconcile()
    assert cluster.requests[-1].exclude == {victim["device"], survivor["device"]}
    assert cluster.status["phase"] == "Running", cluster.status.get("message")
    added = cluster.status["devices"][2]
    assert added["device"] not in (victim["device"], survivor["device"]) and added["node"] != victim["node"]
    assert "DeviceReplaced" in cluster.event_reasons()


def test_a_lost_node_device_is_replaced_by_a_node_outside_the_round_even_when_the_other_one_finished():
    names = [f"n{i}" for i in range(4)]
    task = make_task(data={"dataset": "digits", "source": "hostPath", "hostPath": "/var/lib/fedtask"},
                     devices={"perRound": 2, "minReturned": 2}, rounds={"max": 1, "timeoutSeconds": 3600},
                     nodeLostGraceSeconds=10, scheduling={"fairnessWeight": 0})  # the fastest: the finished one
    del task["spec"]["devices"]["count"]  # node devices: every matching node is one
    cluster = RealScheduler(task, devices=names, nodes=[fleet_node(n) for n in names])
    cluster.advance_until(lambda: cluster.status.get("stage") == "Training", 10)
    victim, survivor = cluster.status["devices"]
    cluster.succeed(survivor["pod"], {"num_samples": 100, "loss": 0.5, "seconds": 0.5, "bytes": 1000})  # the fastest
    cluster.reconcile()
    cluster.nodes = [fleet_node(n, ready=n != victim["node"]) for n in names]
    for condition_ in cluster.nodes[names.index(victim["node"])]["status"]["conditions"]:
        condition_["lastTransitionTime"] = cluster.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.tick(10)
    cluster.reconcile()
    assert cluster.requests[-1].exclude == {victim["device"], survivor["device"]}
    assert cluster.status["phase"] == "Running", cluster.status.get("message")
    added = cluster.status["devices"][2]
    assert added["device"] not in (victim["device"], survivor["device"])
