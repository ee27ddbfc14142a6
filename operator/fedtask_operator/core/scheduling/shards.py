"""Simulated devices (builtin data, shards): which shards train this period and the node each one trains on
(pure); each shard goes where it finishes first, every placement subtracting its requests."""
from __future__ import annotations

import numpy as np

from ..naming import shard_device_id, shard_index
from .estimates import DEFAULT_SAMPLES, SECONDS_PER_SAMPLE_PER_CORE
from .explain import waiting_for_shards
from .period import Period, TaskInput, TaskOutcome
from .policies import allowed_lag, median, random_permutation, rotation_order
from .types import DeviceRequest, DeviceSlot


def place_shards(period: Period, task: TaskInput) -> TaskOutcome:
    """Choose the task's shards for this period and place them on nodes; book the placement in the period."""
    fleet, request = period.fleet, task.request
    check = period.check(task)
    qualifying = task.matched & task.schedulable & task.tolerated & check.fits
    candidates = np.flatnonzero(qualifying)
    count = request.shard_count or int(task.matched.sum())
    if count < request.per_round:
        return TaskOutcome(check, waiting_reason=f"spec.devices.perRound ({request.per_round}) exceeds the number "
                                                  f"of simulated devices ({count})")
    shards = _choose_shards(request, count)
    speed = period.speed(task)
    # Train pods placed on one node this period share its speed. The best placement only ever uses the per_round
    # nodes with the highest speed per pod (an unused one of them beats any other node).
    shared = period.period_load
    per_pod = speed / (1 + shared)
    cand = candidates
    if len(cand) > request.per_round:
        cand = cand[np.argpartition(-per_pod[cand], request.per_round - 1)[: request.per_round]]
    cand = cand[np.lexsort((cand, -per_pod[cand]))]
    work = _shard_work(request, shards, speed, candidates)
    rows = {int(n): check.free[n].copy() for n in cand}
    load = {int(n): 0 for n in cand}
    placements = []
    for shard, seconds in sorted(zip(shards, work), key=lambda sw: (-sw[1], sw[0])):
        best = None
        for node in rows:
            row = rows[node]
            if all(column is not None and row[column] >= amount for _, column, amount in task.requests):
                finish = seconds * (shared[node] + load[node] + 1) / speed[node]
                if best is None or finish < best[0]:
                    best = (finish, node)
        if best is None:
            break
        finish, node = best
        for _, column, amount in task.requests:
            rows[node][column] -= amount
        load[node] += 1
        placements.append((shard, node))
    if len(placements) < request.per_round:
        return TaskOutcome(check, waiting_reason=waiting_for_shards(fleet, check, qualifying, len(placements)))
    seconds_of = dict(zip(shards, work))
    slots = [
        DeviceSlot(device=shard_device_id(shard), node=fleet.names[node],
                   estimated_seconds=round(float(seconds_of[shard] * (shared[node] + load[node]) / speed[node]), 6))
        for shard, node in sorted(placements)
    ]
    period.book_shards(rows, load)
    return TaskOutcome(check, slots=slots)


def _choose_shards(request: DeviceRequest, count: int) -> list[int]:
    participation = np.zeros(count)
    for device, rounds in request.participation.items():
        index = shard_index(device)
        if index is not None and index < count:
            participation[index] = rounds
    size = _shard_sizes(request, count)
    if request.policy == "random":
        order = random_permutation(request, count)
    elif request.policy == "round-robin":
        order = rotation_order(request, participation)
    elif request.policy == "fastest":
        order = np.lexsort((np.arange(count), size))
    else:
        behind = participation < participation.mean() - allowed_lag(request, float(participation.mean()))
        order = np.lexsort((np.arange(count), size, participation, ~behind))
    return sorted(int(i) for i in order[: request.per_round])


def _shard_sizes(request: DeviceRequest, count: int) -> np.ndarray:
    """Per shard: observed seconds when known, else samples; used for ordering under `fastest`/`time-fair`."""
    known = [s for s in request.samples.values() if s]
    size = np.full(count, median(known) if known else float(DEFAULT_SAMPLES))
    for device, samples in request.samples.items():
        index = shard_index(device)
        if index is not None and index < count and samples:
            size[index] = samples
    return size


def _shard_work(request: DeviceRequest, shards: list[int], speed: np.ndarray, candidates: np.ndarray) -> list[float]:
    """Seconds each shard would take on one core-equivalent, calibrated by observed train durations."""
    observed = [(shard_index(d), s) for d, s in request.train_seconds.items() if s and shard_index(d) is not None]
    size = _shard_sizes(request, max([*shards, *(i for i, _ in observed)], default=0) + 1)
    work = [float(size[s]) * SECONDS_PER_SAMPLE_PER_CORE for s in shards]
    if observed:
        typical_speed = median(speed[candidates]) if len(candidates) else 1.0
        ratios = [seconds / max(float(size[index]) * SECONDS_PER_SAMPLE_PER_CORE / typical_speed, 1e-12)
                  for index, seconds in observed]
        factor = median(ratios)
        work = [w * factor for w in work]
    return work
