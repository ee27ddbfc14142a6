"""Stragglers and failed devices feed the fairness ledger and the time model: the real planner and the real scheduler,
round after round, on node devices one of which never returns in time (issue 11: before, only a successful return
updated status.participation and trainSecondsEstimate, so an excluded straggler kept looking "behind", time-fair forced
it into every round, and every such round waited out rounds.timeoutSeconds)."""
from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

from fedtask_operator.core.planner import Observed, plan_task
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling import select_devices
from fedtask_operator.core.scheduling.synthetic import make_node

CONFIG = RuntimeConfig(store_base_uri="s3://fedtask/tasks")
T0 = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)
TIMEOUT = 60
TRAIN_SECONDS = 5.0


def task_manifest(rounds: int, **devices) -> dict:
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": "edge", "namespace": "default", "uid": "uid-1", "generation": 1},
            "spec": {"data": {"dataset": "digits", "source": "hostPath"},
                     "devices": {"perRound": 3, "minReturned": 2, **devices},
                     "rounds": {"max": rounds, "timeoutSeconds": TIMEOUT}, "podRetryLimit": 0}}


def finished(pod: dict, result: dict | None = None, failed: bool = False) -> None:
    message = json.dumps(result or {"num_samples": 100, "seconds": TRAIN_SECONDS, "loss": 0.5, "bytes": 10,
                                    "updates": 1, "accuracy": 0.9, "rejected": []})
    pod["status"] = {"phase": "Failed" if failed else "Succeeded", "containerStatuses": [
        {"name": "worker", "state": {"terminated": {"exitCode": 1 if failed else 0, "message": message}}}]}


def run(rounds: int, bad: str, failing: bool = False, fail_after: int = 30) -> tuple[dict, list[list[str]], float]:
    """Run the task to its end: device `bad` never returns (a straggler) or, with `failing`, fails after
    `fail_after` s.
    Returns the final status, the devices of every round and the simulated seconds."""
    nodes = [make_node(f"n{i}", cpu="4") for i in range(6)]
    task = task_manifest(rounds)
    pods: dict[str, dict] = {}
    started: dict[str, datetime] = {}
    now = T0
    for _ in range(2000):
        observed = Observed(pods=copy.deepcopy(list(pods.values())), now=now, nodes=nodes)
        plan = plan_task(task, observed, CONFIG)
        if plan.needs_devices:
            live = [pod for pod in pods.values() if pod["status"]["phase"] in ("Pending", "Running")]
            assignment = select_devices([plan.device_request], nodes, live, now.timestamp())
            plan = plan_task(task, observed, CONFIG, assignment.tasks["default/edge"])
        task["status"] = plan.status
        for manifest in plan.create:
            pod = copy.deepcopy(manifest)
            pod["status"] = {"phase": "Running"}
            pods[pod["metadata"]["name"]] = pod
            started[pod["metadata"]["name"]] = now
        for name in plan.delete:
            pods.pop(name, None)
        if plan.status.get("phase") in ("Succeeded", "Failed"):
            break
        now += timedelta(seconds=1)
        for name, pod in pods.items():  # the kubelet: every pod but the bad device's ends on time
            if pod["status"]["phase"] != "Running":
                continue
            labels = pod["metadata"]["labels"]
            if labels["fedtask.io/stage"] != "train":
                finished(pod)
            elif labels["fedtask.io/device"] != bad:
                if now - started[name] >= timedelta(seconds=TRAIN_SECONDS):
                    finished(pod)
            elif failing and now - started[name] >= timedelta(seconds=fail_after):
                finished(pod, {"error": "device lost"}, failed=True)
    status = task["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    return status, [record["devices"] for record in status["history"]], (now - T0).total_seconds()


def test_an_excluded_straggler_is_known_to_be_slow_and_does_not_hold_up_every_round():
    status, rounds, seconds = run(rounds=10, bad="n0")
    with_straggler = [devices for devices in rounds if "n0" in devices]
    # it trained (or was given its turn) at most in the first rounds, before it was known to be slow
    assert len(with_straggler) <= 2, rounds
    assert status["participation"]["n0"] == len(with_straggler)  # its turns are in the ledger
    assert status["trainSecondsEstimate"]["n0"] >= TIMEOUT  # at least as slow as the deadline it missed
    # rounds that wait out the deadline are the rounds with the straggler, not every round
    assert seconds < 10 * (TRAIN_SECONDS + 3) + len(with_straggler) * TIMEOUT


def test_a_failed_device_takes_its_turn_in_the_ledger():
    status, rounds, _ = run(rounds=6, bad="n1", failing=True)
    with_failure = [devices for devices in rounds if "n1" in devices]
    assert status["participation"]["n1"] == len(with_failure) >= 1
    assert status["trainSecondsEstimate"]["n1"] >= 30  # it ran 30 s without an update
    assert len(with_failure) <= 2, rounds


def test_a_device_that_fails_fast_does_not_look_fast():
    """A device whose pod exits non-zero after 1 s (faster than any device trains) returned nothing: it counts as
    missing the round's deadline, so time-fair does not prefer it (before, its 1 s made it the fastest device and it
    was picked again and again, every time without an update)."""
    status, rounds, _ = run(rounds=8, bad="n2", failing=True, fail_after=1)
    with_failure = [devices for devices in rounds if "n2" in devices]
    assert status["trainSecondsEstimate"]["n2"] >= TIMEOUT
    assert min(seconds for device, seconds in status["trainSecondsEstimate"].items() if device != "n2") < TIMEOUT
    assert status["participation"]["n2"] == len(with_failure) >= 1
    assert len(with_failure) <= 2, rounds
