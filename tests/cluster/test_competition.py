"""Two tasks competing for the nodes of the real control plane, one of them suspended mid-round and resumed: both
finish with every round exactly once, the suspended one's pods go away while it is suspended, and it resumes the
round it was suspended in."""
from __future__ import annotations

import json
import time

import pytest

from tests.support.cluster import (
    NAMESPACE,
    CreationRecorder,
    LocalCluster,
    assert_bound_by_scheduler,
    digits_task,
    train_pods,
    wait_for_phase,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

ROUNDS = 4
# 1.5 of each node's 2 CPUs (nodes have the machine's nproc, 2 here): a node holds one train pod of either task.
RESOURCES = {"requests": {"cpu": "1500m", "memory": "256Mi"}}


def live_pods(cluster: LocalCluster, name: str) -> list[dict]:
    pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", f"fedtask.io/task={name}")["items"]
    return [pod for pod in pods if pod["status"].get("phase") not in ("Succeeded", "Failed")]


def test_two_competing_tasks_finish_and_the_suspended_one_resumes_its_round(cluster: LocalCluster):
    cpus = {n["metadata"]["name"]: n["status"]["allocatable"]["cpu"] for n in cluster.get_json("nodes")["items"]}
    if any(cpu not in ("2", "3") for cpu in cpus.values()):
        pytest.skip(f"the competition is sized for 2-3 CPU nodes: {cpus}")
    first, second = "compete-a", "compete-b"
    with CreationRecorder(cluster, first) as rec_first, CreationRecorder(cluster, second) as rec_second:
        for name in (first, second):
            cluster.kubectl("apply", "-f", "-", input=digits_task(name, ROUNDS, {
                "count": 3, "perRound": 3, "resources": RESOURCES}))
        # Suspend the first while it trains round 2.
        wait_for(lambda: any(pod["metadata"]["labels"].get("fedtask.io/round") == "2"
                               for _, pod in rec_first.created
                             if pod["metadata"]["labels"].get("fedtask.io/stage") == "train"),
                 timeout=240, interval=0.2, message=f"{first} training round 2")
        cluster.kubectl("patch", "ft", first, "-n", NAMESPACE, "--type", "merge", "-p",
                        json.dumps({"spec": {"suspend": True}}))
        status = wait_for(lambda: (s := cluster.get_json("ft", first, "-n", NAMESPACE).get("status") or {})
                          .get("phase") == "Suspended" and s, timeout=60, interval=0.5, message=f"{first} Suspended")
        suspended_round = status["round"]
        wait_for(lambda: not live_pods(cluster, first), timeout=60, interval=0.5, message=f"{first}'s pods gone")
        # While it is suspended: no pod comes back, the round stays, and the other task goes on.
        second_round = (cluster.get_json("ft", second, "-n", NAMESPACE).get("status") or {}).get("round", 0)
        def second_went_on() -> bool:
            still = cluster.get_json("ft", second, "-n", NAMESPACE).get("status") or {}
            return still.get("phase") == "Succeeded" or still.get("round", 0) > second_round
        wait_for(second_went_on, timeout=120, interval=0.5, message=f"{second} past round {second_round}")
        time.sleep(3)
        assert not live_pods(cluster, first), live_pods(cluster, first)
        assert cluster.get_json("ft", first, "-n", NAMESPACE)["status"]["round"] == suspended_round

        resumed_at = time.monotonic()
        cluster.kubectl("patch", "ft", first, "-n", NAMESPACE, "--type", "merge", "-p",
                        json.dumps({"spec": {"suspend": False}}))
        tasks = {name: wait_for_phase(cluster, name, timeout=300) for name in (first, second)}

    for name, recorder in ((first, rec_first), (second, rec_second)):
        task = tasks[name]
        assert task["status"]["phase"] == "Succeeded", task["status"]
        assert [entry["round"] for entry in task["status"]["history"]] == list(range(1, ROUNDS + 1)), task["status"]
        assert not recorder.errors, recorder.errors
        assert_bound_by_scheduler(cluster, task, train_pods(recorder))
    after = [pod for at, pod in rec_first.created if at >= resumed_at]
    assert after, "no pod created after the resume"
    first_round = int(after[0]["metadata"]["labels"].get("fedtask.io/round", 0))
    assert first_round == suspended_round, (suspended_round, [p["metadata"]["name"] for p in after])
    # Every round trained once per device: a suspended round's pods are created again under the same names at most.
    for recorder in (rec_first, rec_second):
        rounds = {}
        for pod in train_pods(recorder).values():
            labels = pod["metadata"]["labels"]
            rounds.setdefault(int(labels["fedtask.io/round"]), set()).add(labels["fedtask.io/device"])
        assert sorted(rounds) == list(range(1, ROUNDS + 1)), rounds
        assert all(len(devices) == 3 for devices in rounds.values()), rounds
