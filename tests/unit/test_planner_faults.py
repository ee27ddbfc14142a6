"""Faults the planner rides out: a store outage (the worker's exit 3) is retried on its own backoff and budget, not
against spec.podRetryLimit; server-side stages and rounds below quorum have deadlines; pods on lost nodes are given
up after a grace period."""
from __future__ import annotations

from datetime import timedelta

from fedtask_operator.core.compaction import compact, round_devices
from fedtask_operator.core.planner import NODE_LOST_GRACE_SECONDS
from tests.unit.test_planner import T0, Cluster, make_task, node, train_pods

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


def test_a_round_below_quorum_waits_for_running_devices_one_more_timeout_then_fails():
    cluster = in_training(rounds={"max": 3, "timeoutSeconds": 60})
    first, *others = cluster.active("train")
    cluster.succeed(first)
    for name in others:
        cluster.start(name)
    cluster.tick(61)
    plan = cluster.reconcile()
    assert condition(cluster, "Stalled")["reason"] == "QuorumNotReached" and cluster.status["phase"] == "Running"
    assert plan.requeue_after is not None and plan.requeue_after <= 59
    cluster.tick(plan.requeue_after)
    cluster.reconcile()
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "QuorumNotReached" and "twice rounds.timeoutSeconds=60" in failed["message"]


def not_ready(name: str, since) -> dict:
    node_object = node(name)
    node_object["status"] = {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                             "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]}
    return node_object


def test_a_train_pod_on_a_node_notready_past_the_grace_period_fails_its_device_which_is_replaced():
    names = [f"n{i}" for i in range(4)]
    task = make_task(data={"dataset": "digits", "source": "hostPath", "hostPath": "/var/lib/fedtask"},
                     devices={"perRound": 2, "minReturned": 2}, rounds={"max": 1, "timeoutSeconds": 3600})
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
    cluster.tick(NODE_LOST_GRACE_SECONDS - 1)
    plan = cluster.reconcile()
    assert not plan.create and plan.requeue_after is not None and plan.requeue_after <= 1.001, "within the grace"
    cluster.free_devices = names[2:]
    cluster.tick(1)
    cluster.reconcile()
    record = next(d for d in cluster.status["devices"] if d["pod"] == pod)
    assert record["state"] == "Failed" and "NotReady" in record["reason"] and "not retried" in record["reason"]
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
