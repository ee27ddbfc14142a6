"""Bounded status (core/compaction.py): what the planner stores stays far below etcd's request limit at any task
size, and the planner decides the same from the compact form."""
from __future__ import annotations

import dataclasses
import json
import random
import time
from datetime import timedelta

import pytest

from fedtask_operator.core import compaction
from fedtask_operator.core.compaction import compact, expand, round_count, round_devices, serialized_size
from fedtask_operator.core.planner import Observed, plan_task
from fedtask_operator.core.scheduling import select_devices
from fedtask_operator.core.scheduling.request import build_device_request
from fedtask_operator.core.scheduling.synthetic import make_node
from fedtask_operator.core.scheduling.types import DeviceSlot, TaskAssignment
from fedtask_operator.core.spec import parse_task
from tests.support.planner import CONFIG, T0, make_task, schema_problems

STATUS_LIMIT = 512 * 1024


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mixed_round(count: int) -> list[dict]:
    """A round's device records in every state, with retries, late starts, results and reasons."""
    records = []
    for i in range(count):
        device = f"d{i:05d}"
        record = {"device": device, "node": f"node-{i % 7}", "state": "Pending", "attempts": 0,
                  "pod": f"big-r0003-train-{device}", "startTime": stamp(0)}
        kind = i % 5
        if kind == 1:
            record["state"] = "Running"
        elif kind == 2:
            record.update(state="Succeeded", finishTime=stamp(9), result={"num_samples": 100 + i, "loss": 0.5})
        elif kind == 3:
            record.update(state="Failed", attempts=1, pod=f"big-r0003-train-{device}-a1", startTime=stamp(4.5),
                          reason=f"pod big-r0003-train-{device}-a1 failed (podRetryLimit 1 reached): exit code 1")
        elif kind == 4:
            record.update(state="Excluded", reason="straggler: no update within rounds.timeoutSeconds=60")
        records.append(record)
    return records


def test_a_large_round_packs_and_unpacks_what_the_planner_reads():
    records = mixed_round(300)
    status = {"round": 3, "roundStartTime": stamp(0), "devices": [dict(r) for r in records]}
    packed = compact(json.loads(json.dumps(status)))
    assert "devices" not in packed and len(packed["deviceRows"]) == 300
    assert packed["deviceNodes"] == [f"node-{i}" for i in range(7)]
    back = round_devices(packed, "big")
    for original, unpacked in zip(records, back, strict=True):
        expected = {key: value for key, value in original.items() if key != "finishTime"}
        if "result" in expected:
            expected["result"] = {"num_samples": expected["result"]["num_samples"]}
        if len(expected.get("reason", "")) and expected["reason"] not in packed["deviceReasons"]:
            expected["reason"] = compaction.REASON_NOT_KEPT
        assert unpacked == expected
    assert len(packed["deviceReasons"]) <= compaction.REASON_LIMIT + 1
    assert expand(packed, "big")["devices"] == back and "deviceRows" not in expand(packed, "big")


def test_a_small_round_keeps_its_full_records():
    records = mixed_round(compaction.PACK_DEVICES_ABOVE)
    status = compact({"round": 3, "roundStartTime": stamp(0), "devices": json.loads(json.dumps(records))})
    assert status["devices"] == records and "deviceRows" not in status


def test_a_bad_row_is_a_clear_error():
    status = {"round": 1, "deviceRows": ["d001 0 Q0"], "deviceNodes": ["n"]}
    try:
        round_devices(status, "t")
    except compaction.CompactionError as error:
        assert "status.deviceRows" in str(error) and "d001 0 Q0" in str(error)
    else:
        raise AssertionError("a row with an unknown state was read")


def test_round_records_keep_counts_and_capped_lists():
    names = [f"d{i:05d}" for i in range(500)]
    history = [{"round": r, "devices": names, "returned": names[:400], "excluded": names[400:], "rejected": []}
               for r in range(1, 21)]
    status = compact({"history": json.loads(json.dumps(history))})
    for record in status["history"]:
        assert (round_count(record, "devices"), round_count(record, "returned"),
                round_count(record, "excluded"), round_count(record, "rejected")) == (500, 400, 100, 0)
    recent, old = status["history"][-compaction.DETAILED_ROUNDS:], status["history"][:-compaction.DETAILED_ROUNDS]
    assert all(r["devices"] == names[:compaction.ROUND_LIST_LIMIT] for r in recent)
    assert all("devices" not in r and "returned" not in r and r["rejected"] == [] for r in old)


def test_participation_keeps_the_devices_that_differ_from_the_common_count():
    universe = [f"d{i:05d}" for i in range(3000)]
    ledger = {device: 5 for device in universe[:2500]} | {device: 1 for device in universe[2500:]}
    status = compact({"participation": dict(ledger)}, universe)
    assert status["participationDefault"] == 5
    assert status["participation"] == {device: 1 for device in universe[2500:]}  # exact: the behind ones are named
    rebuilt = {device: status["participation"].get(device, status["participationDefault"]) for device in universe}
    assert rebuilt == ledger


def test_participation_beyond_the_limit_keeps_the_farthest_from_the_default():
    universe = [f"d{i:05d}" for i in range(10000)]
    rng = random.Random(3)
    ledger = {device: rng.choice([3, 4, 4, 4, 5]) for device in universe}
    ledger["d00007"] = 0
    status = compact({"participation": dict(ledger)}, universe)
    assert len(status["participation"]) == compaction.LEDGER_LIMIT
    assert status["participationDefault"] == 4 and status["participation"]["d00007"] == 0


def test_train_estimates_beyond_the_limit_keep_the_least_typical():
    estimates = {f"d{i:05d}": 10.0 + (i % 10) * 0.1 for i in range(5000)}
    estimates["d00003"] = 400.0  # the slow device the scheduler must keep avoiding
    status = compact({"trainSecondsEstimate": dict(estimates)})
    assert len(status["trainSecondsEstimate"]) == compaction.LEDGER_LIMIT
    assert status["trainSecondsEstimate"]["d00003"] == 400.0


def test_the_scheduler_request_reads_the_compact_ledger():
    """The device request carries the default, and the scheduler's ordering puts the behind devices first."""
    task = make_task(devices={"count": 3000, "perRound": 500})
    universe = [f"d{i:03d}" for i in range(3000)]
    status = compact({"round": 4, "shardCount": 3000,
                      "participation": {d: 5 for d in universe[:2500]} | {d: 1 for d in universe[2500:]}}, universe)
    request = build_device_request(parse_task(task), status=status)
    assert request.participation_default == 5 and len(request.participation) == 500
    nodes = [make_node(f"n{i}", cpu="64") for i in range(10)]
    chosen = {slot.device for slot in select_devices([request], nodes, []).tasks[request.task].devices}
    assert chosen == set(universe[2500:]), "the 500 devices behind are the ones picked, as with the full ledger"
    without_default = dataclasses.replace(request, participation_default=0)
    chosen = {slot.device for slot in select_devices([without_default], nodes, []).tasks[request.task].devices}
    assert chosen != set(universe[2500:]), "reading absent devices as 0 would pick others (the test can fail)"


def big_task(per_round: int, count: int) -> dict:
    return make_task("big", devices={"count": count, "perRound": per_round},
                     rounds={"max": 1000, "timeoutSeconds": 600})


def succeeded(manifest: dict, result: dict) -> dict:
    pod = json.loads(json.dumps(manifest))
    pod["status"] = {"phase": "Succeeded", "containerStatuses": [
        {"name": "worker", "state": {"terminated": {"exitCode": 0, "message": json.dumps(result)}}}]}
    return pod


def old_style_history(rounds: int, names: list[str]) -> list[dict]:
    """History as the planner kept it before compaction: every round lists every device."""
    return [{"round": r, "devices": names, "returned": names, "excluded": [], "rejected": [], "accuracy": 0.9,
             "loss": 0.3, "startTime": stamp(r), "durationSeconds": 61.5, "trainSeconds": 50.25,
             "aggregateSeconds": 6.5, "adjustSeconds": 4.75, "samples": 6000000, "period": r,
             "uri": f"s3://fedtask/tasks/default/big-uid-1/round-{r:04d}/global.safetensors"}
            for r in range(1, rounds + 1)]


@pytest.mark.slow  # ~15-40 s: the planner handles 10000 train pods in each of five passes
def test_status_stays_under_512_kib_at_10000_devices_per_round_and_200_rounds():
    """perRound 10000 over 20000 simulated devices, 199 rounds of history (written the old way, every device
    listed) and ledgers of every device: every status the planner writes through round 200 (scheduling, 10000 train
    pods, every update arriving, aggregate, adjust, the next round's scheduling) is < 512 KiB and valid for the CRD."""
    per_round, count, rounds = 10000, 20000, 200
    names = [f"d{i:03d}" for i in range(count)]
    rng = random.Random(7)
    ledger = {name: rng.randint(90, 110) for name in names}
    task = big_task(per_round, count)
    task["status"] = {
        "phase": "Running", "round": rounds, "stage": "Scheduling", "shardCount": count, "startTime": stamp(0),
        "waitingSince": stamp(0), "history": old_style_history(rounds - 1, names[:per_round]),
        "participation": dict(ledger),
        "trainSecondsEstimate": {name: round(rng.uniform(5, 60), 3) for name in names},
    }
    before = serialized_size(task["status"])
    now, pods, sizes, elapsed = T0 + timedelta(seconds=10), {}, [], []

    def plan(assignment=None):
        started = time.perf_counter()
        result = plan_task(task, Observed(pods=list(pods.values()), now=now), CONFIG, assignment)
        elapsed.append(time.perf_counter() - started)
        sizes.append(serialized_size(result.status))
        assert sizes[-1] < STATUS_LIMIT, (result.status.get("stage"), sizes[-1])
        task["status"] = result.status
        return result

    first = plan()
    assert first.needs_devices and first.device_request.participation_default == 0
    assert len(first.device_request.participation) == count  # the whole ledger reaches the scheduler
    behind = sorted(names, key=lambda n: (task["status"]["participation"].get(n, 0), n))[:per_round]
    slots = [DeviceSlot(device=name, node=f"node-{i % 500:03d}", estimated_seconds=30.0)
             for i, name in enumerate(behind)]
    created = plan(TaskAssignment(devices=slots)).create
    assert len(created) == per_round and task["status"]["stage"] == "Training"
    assert len(round_devices(task["status"], "big")) == per_round and "devices" not in task["status"]
    now += timedelta(seconds=40)
    pods = {m["metadata"]["name"]: succeeded(m, {"num_samples": 300, "loss": 0.4, "seconds": 35.0, "bytes": 80000})
            for m in created}
    aggregate = plan().create
    assert task["status"]["stage"] == "Aggregating" and len(aggregate) == 1
    updates = [a for a in aggregate[0]["spec"]["containers"][0]["args"] if "/updates/" in str(a)]
    assert len(updates) == per_round, "every returned device's update is aggregated (read from the packed rows)"
    pods = {aggregate[0]["metadata"]["name"]: succeeded(aggregate[0], {"updates": per_round, "rejected": []})}
    now += timedelta(seconds=5)
    adjust = plan().create
    pods = {adjust[0]["metadata"]["name"]: succeeded(adjust[0], {"accuracy": 0.93, "loss": 0.2})}
    now += timedelta(seconds=5)
    final = plan()
    status = task["status"]
    assert status["round"] == rounds + 1 and len(status["history"]) == rounds
    last = status["history"][-1]
    assert (last["round"], round_count(last, "devices"), round_count(last, "returned"), last["samples"]) == (
        rounds, per_round, per_round, 300 * per_round)
    assert not schema_problems(status), schema_problems(status)
    # fairness goes on from the compact ledger: this round's devices (the ones behind) gained a turn
    true = dict(ledger)
    for name in behind:
        true[name] += 1
    request = final.device_request
    assert request.participation_default and len(request.participation) <= compaction.LEDGER_LIMIT
    read = {name: request.participation.get(name, request.participation_default) for name in names}
    assert all(read[name] == true[name] for name in request.participation), "the named devices are exact"
    error = sum(abs(read[name] - true[name]) for name in names) / count
    spread = sum(abs(true[name] - 100) for name in names) / count  # what forgetting the ledger would cost
    assert error < spread, (error, spread)
    print(f"status bytes: before {before}, max {max(sizes)} over {len(sizes)} plans; slowest plan "
          f"{max(elapsed):.2f}s; participation mean error {error:.2f} rounds (ledger spread {spread:.2f})")
