"""Faults the planner rides out: a store outage (the worker's exit 3) is retried on its own backoff and budget, not
against spec.backoffLimit."""
from __future__ import annotations

from datetime import timedelta

from fedtask_operator.core.compaction import compact, round_devices
from tests.unit.test_planner import T0, Cluster, make_task, train_pods

STORE_DOWN = "s3://fedtask/x: read still failing after 60 s of retries: ConnectionRefusedError"


def in_training(**spec) -> Cluster:
    cluster = Cluster(make_task(**spec))
    cluster.reconcile()
    cluster.succeed("mnist-init")
    cluster.reconcile()
    return cluster


def condition(cluster: Cluster, type_: str) -> dict:
    return next(c for c in cluster.status["conditions"] if c["type"] == type_)


def test_store_outage_exits_are_retried_after_a_backoff_not_against_backoff_limit():
    cluster = in_training(backoffLimit=1, rounds={"max": 3, "timeoutSeconds": 3600})
    pod = train_pods(1, "d000")[0]
    created_at = []
    for outage in range(4):  # four outages in a row: backoffLimit 1 would have failed the device at the second
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
    # a real failure after the outages still has its one retry (backoffLimit counts real failures only)
    current = next(d for d in cluster.status["devices"] if d["device"] == "d000")["pod"]
    cluster.fail(current)
    plan = cluster.reconcile()
    record = next(d for d in cluster.status["devices"] if d["device"] == "d000")
    assert record["state"] == "Pending" and record["attempts"] == 5 and plan.create, "retried at once, as before"
    cluster.fail(record["pod"])
    cluster.reconcile()
    record = next(d for d in cluster.status["devices"] if d["device"] == "d000")
    assert record["state"] == "Failed" and "backoffLimit 1 reached" in record["reason"]


def test_a_store_outage_beyond_the_budget_fails_the_stage_with_store_unavailable():
    cluster = in_training(backoffLimit=3, storeOutageSeconds=120)
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
    assert outages >= 4, "more exits than backoffLimit 3 were survived before the budget ran out"


def test_outage_fields_survive_packing():
    start = T0.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    later = (T0 + timedelta(seconds=12.5)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    devices = [{"device": f"d{i:04d}", "node": "n", "pod": f"t-r0002-train-d{i:04d}-a2", "state": "Pending",
                "attempts": 2, "startTime": start, "outages": 2, "outageSince": start, "retryAfter": later}
               for i in range(150)]
    status = compact({"round": 2, "roundStartTime": start, "devices": [dict(d) for d in devices]})
    assert "deviceRows" in status and round_devices(status, "t") == devices
