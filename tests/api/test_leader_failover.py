"""The leader lease with two real operator processes (`--leader-election`) against the emulated API server: exactly
one acts; the leader paused with SIGSTOP for longer than the lease loses it to the other, which finishes the task;
resumed with SIGCONT, the old leader writes nothing. No pod is created twice, no status regresses, every round
happens once."""
from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from tests.support.kube import FEDERATEDTASKS, make_node
from tests.support.operator import DEVICE, OperatorProcess, digits_task, finished, task_status
from tests.support.rbac import RULES, granted, recorded_calls
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.api, pytest.mark.slow]  # ~30 s: two operators, a pause longer than the lease

LEASES = "coordination.k8s.io/v1/leases"
DURATION = 6  # --lease-duration: the holder acts for 4 s after each renewal, the other waits 6 s


def lease_holder(cluster) -> str:
    lease = cluster.get(LEASES, "default", "fedtask-operator") or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def test_a_leader_paused_past_its_lease_is_replaced_and_writes_nothing_when_resumed(cluster, s3_server, store_bucket,
                                                                                    kubelet, tmp_path):
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(make_node("node-b", labels=DEVICE))
    cluster.apply(digits_task("leased", rounds=4))
    replicas = {}
    for name in ("replica-1", "replica-2"):
        process = OperatorProcess(cluster, s3_server, tmp_path / f"{name}.log", "--leader-election",
                                  f"--lease-duration={DURATION}", "--lease-namespace=default", "--verbose")
        process.env["POD_NAME"] = name
        replicas[name] = process
    for process in replicas.values():  # started together
        process.start()
    try:
        holder = wait_for(lambda: lease_holder(cluster), timeout=30, message="a leader")
        leader_name = holder.rsplit("_", 1)[0]
        leader, other = replicas[leader_name], next(p for n, p in replicas.items() if n != leader_name)
        wait_for(lambda: task_status(cluster, "leased").get("round", 0) >= 1, timeout=60, message="round 1")
        assert "acquired by" not in other.log(), "two leaders"
        assert "Handler 'task_changed'" in other.log()  # it watches (a warm standby)...

        os.kill(leader.process.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            wait_for(lambda: lease_holder(cluster) and not lease_holder(cluster).startswith(leader_name + "_"),
                     timeout=30, message="the other replica to take the lease over")
            took_over = time.monotonic() - paused_at
            assert took_over >= DURATION * 0.9, took_over  # not before the paused holder's lease ran out
            round_at_takeover = task_status(cluster, "leased").get("round", 0)
            wait_for(lambda: task_status(cluster, "leased").get("round", 0) > round_at_takeover
                     or finished(cluster, "leased"), timeout=60, message="the new leader to move the task on")
        finally:
            os.kill(leader.process.pid, signal.SIGCONT)
        status = wait_for(lambda: finished(cluster, "leased"), timeout=120, message="the task to finish")
        time.sleep(1)  # the resumed replica's next renewal attempt, and any write it would still make

        assert status["phase"] == "Succeeded", status.get("message")
        assert [record["round"] for record in status["history"]] == [1, 2, 3, 4]
        assert len(kubelet.started) == len(set(kubelet.started)), str(kubelet.started)
        assert f"lost by {holder}" in leader.log(), leader.log()[-3000:]
        assert "acquired by" in other.log()
        # Every stored version of the status: rounds and history never go back.
        versions = [v for v in cluster.history(FEDERATEDTASKS) if v["metadata"]["name"] == "leased"]
        rounds = [(v.get("status") or {}).get("round", 0) for v in versions]
        histories = [len((v.get("status") or {}).get("history") or []) for v in versions]
        assert rounds == sorted(rounds), rounds
        assert histories == sorted(histories), histories
        # The Lease calls the operators made are granted by the RBAC rules (tests/api/test_rbac.py runs with peering).
        rules = granted(yaml.safe_load(RULES.read_text())["cluster"])
        lease_calls = {(group, resource, verb) for group, resource, verb, _ in recorded_calls(cluster)
                       if resource == "leases"}
        assert {verb for _, _, verb in lease_calls} == {"get", "create", "patch"}, lease_calls
        assert lease_calls <= rules, lease_calls - rules
    finally:
        for process in replicas.values():
            process.stop()
        for name, process in replicas.items():
            print(f"--- {name}\n" + process.log()[-4000:])
