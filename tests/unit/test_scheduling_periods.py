"""Learning periods (core/scheduling/collection.py): when a period's joint decision is due, its number, the tasks it
collects, priorities inside it, and what the planner records of it in the status."""
from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from fedtask_operator.core.planner import Observed, plan_task
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling import DeviceRequest
from fedtask_operator.core.scheduling.collection import (
    SchedulingConfig,
    decide_period,
    due_at,
    next_period_number,
)
from fedtask_operator.core.scheduling.request import build_device_request
from fedtask_operator.core.scheduling.synthetic import make_node
from fedtask_operator.core.spec import parse_task

CONFIG = RuntimeConfig(store_base_uri="s3://fedtask/tasks")
T0 = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)
NODES = [make_node("n0"), make_node("n1")]


def request(task, ready=100.0, **kwargs):
    return DeviceRequest(task=task, per_round=1, requests={"cpu": "100m"}, node_devices=True, ready_since=ready,
                         waiting_since=ready, **kwargs)


def test_a_period_is_due_a_window_after_its_first_task_became_ready():
    requests = [request("ns/a", ready=100.0), request("ns/b", ready=101.5)]
    assert due_at(requests, 2.0, active=["ns/a", "ns/b", "ns/c"]) == 102.0
    # nobody else could join: at once
    assert due_at(requests, 2.0, active=["ns/a", "ns/b"]) == float("-inf")
    # a replacement in the middle of a round does not wait
    assert due_at([*requests, request("ns/c", replacement=True)], 2.0, active=["ns/a", "ns/b", "ns/c", "ns/d"]) \
        == float("-inf")
    config = SchedulingConfig(collection_window=2.0)
    waiting = decide_period(requests, NODES, [], 101.0, active=["ns/a", "ns/b", "ns/c"], config=config, period=7)
    assert not waiting.due and waiting.retry_after == 1.0 and waiting.assignment is None
    due = decide_period(requests, NODES, [], 102.0, active=["ns/a", "ns/b", "ns/c"], config=config, period=7)
    assert due.due and due.period == 7 and due.assignment.period == 7
    assert {key: task.period for key, task in due.assignment.tasks.items()} == {"ns/a": 7, "ns/b": 7}


def test_priorities_hold_inside_a_period_whoever_was_ready_first():
    config = SchedulingConfig(collection_window=2.0)
    early_low = request("ns/low", ready=100.0, priority=0)
    late_high = request("ns/high", ready=101.0, priority=5)
    one_node = [make_node("n0")]
    decision = decide_period([early_low, late_high], one_node, [], 102.0, active=["ns/low", "ns/high", "ns/x"],
                             config=config, period=1)
    assert [slot.node for slot in decision.assignment.tasks["ns/high"].devices] == ["n0"]
    assert "higher-priority tasks hold" in decision.assignment.tasks["ns/low"].waiting_reason


def test_the_operator_default_weight_applies_to_tasks_without_their_own():
    config = SchedulingConfig(collection_window=0.0, fairness_weight=7.5)
    decision = decide_period([request("ns/a", policy="time-fair"), request("ns/b", fairness_weight=0.5)],
                             NODES, [], 100.0, active=["ns/a", "ns/b"], config=config, period=1)
    assert decision.assignment.tasks["ns/a"].fairness_weight == 7.5
    assert decision.assignment.tasks["ns/b"].fairness_weight == 0.5


def test_period_numbers_continue_from_every_task_s_status():
    assert next_period_number([]) == 1
    assert next_period_number([{"period": 4}, {}, None, {"period": 9}]) == 10


@pytest.mark.parametrize("window, weight", [(-1.0, 1.0), (float("nan"), 1.0), (1.0, -0.5), (1.0, float("inf"))])
def test_bad_settings_are_refused(window, weight):
    with pytest.raises(ValueError):
        SchedulingConfig(collection_window=window, fairness_weight=weight)


@pytest.mark.parametrize("flags, words", [(["--collection-window", "-1"], "collection window must be"),
                                          (["--fairness-weight", "nan"], "fairness weight must be")])
def test_fedtask_run_refuses_bad_scheduling_flags_naming_them(flags, words, capsys):
    from fedtask_operator.local.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["task.yaml", *flags])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--collection-window/--fairness-weight:" in error and words in error and "Traceback" not in error


# --- what the planner records ---------------------------------------------------------------------------------------


def manifest(**spec):
    body = {"data": {"dataset": "digits", "source": "hostPath"}, "devices": {"perRound": 1},
            "rounds": {"max": 2, "timeoutSeconds": 60}, **spec}
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u", "generation": 1}, "spec": body}


def succeeded(pod):
    message = json.dumps({"uri": "s3://x", "bytes": 1, "seconds": 0.1})
    return {**pod, "status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "worker", "state": {"terminated": {"exitCode": 0, "message": message}}}]}}


def scheduling_task(**spec):
    """A task in round 1's Scheduling stage, and its (succeeded) init pod."""
    task = manifest(**spec)
    plan = plan_task(task, Observed(pods=[], now=T0, nodes=NODES), CONFIG)
    task["status"] = plan.status
    init = succeeded(plan.create[0])
    plan = plan_task(task, Observed(pods=[init], now=T0, nodes=NODES), CONFIG)
    task["status"] = plan.status
    assert plan.needs_devices and task["status"]["stage"] == "Scheduling"
    return task, [init]


def test_the_period_and_its_time_are_in_the_status_and_in_the_round_s_record():
    task, pods = scheduling_task()
    now = T0 + timedelta(seconds=3)
    first = plan_task(task, Observed(pods=pods, now=now, nodes=NODES), CONFIG)
    decision = decide_period([first.device_request], NODES, [], now.timestamp(), active=["ns/t"],
                             config=SchedulingConfig(), period=4)
    plan = plan_task(task, Observed(pods=pods, now=now, nodes=NODES), CONFIG, decision.assignment.tasks["ns/t"])
    assert plan.status["period"] == 4 and plan.status["periodTime"] == "2026-12-01T08:00:03.000Z"
    assert plan.status["currentRound"]["period"] == 4


def test_a_task_left_waiting_collects_from_that_period_on_and_a_retry_that_changes_nothing_writes_nothing():
    task, pods = scheduling_task(devices={"perRound": 3})  # two nodes: it waits
    now = T0 + timedelta(seconds=3)
    observed = Observed(pods=pods, now=now, nodes=NODES)
    first = plan_task(task, observed, CONFIG)
    assert first.device_request.ready_since == T0.timestamp()  # it began to wait at T0
    decision = decide_period([first.device_request], NODES, [], now.timestamp(), active=["ns/t"],
                             config=SchedulingConfig(), period=2)
    plan = plan_task(task, observed, CONFIG, decision.assignment.tasks["ns/t"])
    assert plan.status["stage"] == "Scheduling" and plan.status["period"] == 2
    task["status"] = plan.status
    request = build_device_request(parse_task(task), status=task["status"])
    assert request.ready_since == now.timestamp()  # the next period collects from the one it waited through
    later = Observed(pods=pods, now=now + timedelta(seconds=10), nodes=NODES)
    again = decide_period([plan_task(task, later, CONFIG).device_request], NODES, [], now.timestamp() + 10,
                          active=["ns/t"], config=SchedulingConfig(), period=3)
    retry = plan_task(task, later, CONFIG, again.assignment.tasks["ns/t"])
    assert retry.status == task["status"] and not retry.events  # still waiting, for the same reason


def test_the_fairness_of_participation_is_in_the_status():
    task, pods = scheduling_task()
    task = copy.deepcopy(task)
    task["status"]["participation"] = {"n0": 3, "n1": 1}
    plan = plan_task(task, Observed(pods=pods, now=T0, nodes=NODES), CONFIG)
    assert plan.status["fairness"] == pytest.approx(16 / 20, abs=1e-4)  # Jain: (3 + 1)^2 / (2 (9 + 1))
    # a device node that never trained counts as zero
    plan = plan_task(task, Observed(pods=pods, now=T0, nodes=[*NODES, make_node("n2")]), CONFIG)
    assert plan.status["fairness"] == pytest.approx(16 / 30, abs=1e-4)
