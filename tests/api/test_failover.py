"""High availability: a standby replica (lower kopf peering priority) never acts while the active one runs, and
takes over when the active one dies; the task completes with every round exactly once."""
from __future__ import annotations

import pytest

from tests.support.kube import make_node
from tests.support.operator import DEVICE, OperatorProcess, digits_task, finished, task_status
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.api, pytest.mark.slow]  # ~20 s: two operators and a 4 s peering lifetime

LIFETIME = 4  # seconds before a silent peer is presumed dead


def test_the_standby_stays_idle_and_takes_over_when_the_active_replica_dies(cluster, s3_server, store_bucket,
                                                                            kubelet, tmp_path):
    cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                   "metadata": {"name": "fedtask", "namespace": "default"}})
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(make_node("node-b", labels=DEVICE))
    peering = ("--peering=fedtask", f"--peering-lifetime={LIFETIME}", "--verbose")
    active = OperatorProcess(cluster, s3_server, tmp_path / "active.log", *peering, "--priority=20").start()
    standby = OperatorProcess(cluster, s3_server, tmp_path / "standby.log", *peering, "--priority=10")
    try:
        wait_for(lambda: "Resuming operations" in active.log(), timeout=30, message="the active replica to run")
        standby.start()
        wait_for(lambda: "Pausing" in standby.log(), timeout=30, message="the standby to pause")
        cluster.apply(digits_task("ha", rounds=2))
        wait_for(lambda: task_status(cluster, "ha").get("round") == 1, timeout=60, message="round 1")
        assert "Handler 'task_changed'" not in standby.log()  # the standby never acted
        assert "Resuming operations" not in standby.log()

        active.kill()
        status = wait_for(lambda: finished(cluster, "ha"), timeout=120, message="the standby to finish the task")

        assert status["phase"] == "Succeeded", status.get("message")
        assert [record["round"] for record in status["history"]] == [1, 2]
        assert "Handler 'task_" in standby.log() or "Handler 'pod_changed'" in standby.log()
        assert len(kubelet.started) == len(set(kubelet.started)), kubelet.started
    finally:
        active.stop()
        standby.stop()
        print(standby.log()[-5000:])


def test_replicas_started_at_the_same_moment_complete_the_task_with_every_round_and_pod_once(cluster, s3_server,
                                                                                             store_bucket, kubelet,
                                                                                             tmp_path):
    """kopf peering needs a watch round-trip to see a new peer, so two replicas that start together may both act for
    a moment (about 30-130 ms measured here) before the lower one pauses; every action is idempotent (deterministic
    pod names, AlreadyExists is success, status derived from the cluster), so nothing is done twice."""
    cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                   "metadata": {"name": "fedtask", "namespace": "default"}})
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(digits_task("together", rounds=2))  # waiting for both replicas as they start
    peering = ("--peering=fedtask", f"--peering-lifetime={LIFETIME}", "--verbose")
    replicas = [OperatorProcess(cluster, s3_server, tmp_path / f"replica-{i}.log", *peering).start() for i in (1, 2)]
    try:
        status = wait_for(lambda: finished(cluster, "together"), timeout=120, message="the task to finish")

        assert status["phase"] == "Succeeded", status.get("message")
        assert [record["round"] for record in status["history"]] == [1, 2]
        assert len(kubelet.started) == len(set(kubelet.started)), kubelet.started
        paused = [replica for replica in replicas if "Pausing operations in favour of" in replica.log()
                  or "Resuming operations" not in replica.log()]
        assert paused, "one replica must stand by"
    finally:
        for replica in replicas:
            replica.stop()
