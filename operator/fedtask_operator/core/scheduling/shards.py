"""Simulated devices (builtin data, shards): their time model, and the node each chosen shard trains on (pure); each
shard goes where it finishes first, every placement subtracting its requests. Which shards train: pools.py."""
from __future__ import annotations

import numpy as np

from ..naming import shard_device_id, shard_index
from .estimates import DEFAULT_SAMPLES, SECONDS_PER_SAMPLE_PER_CORE
from .explain import waiting_for_shards
from .period import Period, TaskCheck, TaskInput, TaskOutcome
from .policies import median
from .types import DeviceRequest, DeviceSlot


def place_shards(period: Period, task: TaskInput, shards: list[int], work: list[float]) -> TaskOutcome:
    """Place the chosen shards (`work`: their seconds on one core-equivalent) on nodes; book the placement."""
    fleet, request = period.fleet, task.request
    check = period.check(task)
    qualifying = task.matched & task.schedulable & task.tolerated & check.fits
    candidates = np.flatnonzero(qualifying)
    speed = period.speed(task)
    # Train pods placed on one node this period share its speed. The best placement only ever uses the per_round
    # nodes with the highest speed per pod (an unused one of them beats any other node).
    shared = period.period_load
    per_pod = speed / (1 + shared)
    cand = candidates
    if len(cand) > request.per_round:
        cand = cand[np.argpartition(-per_pod[cand], request.per_round - 1)[: request.per_round]]
    cand = cand[np.lexsort((cand, -per_pod[cand]))]
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
    if len(placements) < len(shards):
        return TaskOutcome(check, waiting_reason=waiting_for_shards(fleet, check, qualifying, len(placements)))
    seconds_of = dict(zip(shards, work))
    slots = [
        DeviceSlot(device=shard_device_id(shard), node=fleet.names[node],
                   estimated_seconds=round(float(seconds_of[shard] * (shared[node] + load[node]) / speed[node]), 6))
        for shard, node in sorted(placements)
    ]
    period.book_shards(task.key, rows, load)
    return TaskOutcome(check, slots=slots)


def typical_speed(period: Period, task: TaskInput, check: TaskCheck) -> float:
    """The median speed of the nodes the task's train pods may run on (1.0 when none qualifies)."""
    qualifying = task.matched & task.schedulable & task.tolerated & check.fits
    speeds = period.speed(task)[qualifying]
    return median(speeds) if len(speeds) else 1.0


def shard_sizes(request: DeviceRequest, count: int) -> np.ndarray:
    """Per shard: observed seconds when known, else samples; used for ordering under `fastest`/`time-fair`."""
    known = [s for s in request.samples.values() if s]
    size = np.full(count, median(known) if known else float(DEFAULT_SAMPLES))
    for device, samples in request.samples.items():
        index = shard_index(device)
        if index is not None and index < count and samples:
            size[index] = samples
    return size


def shard_work(request: DeviceRequest, count: int, speed: float) -> np.ndarray:
    """Seconds each of the `count` shards would take on one core-equivalent, calibrated by observed train durations
    (which ran at about `speed`, the typical node's)."""
    size = shard_sizes(request, count)
    work = size * SECONDS_PER_SAMPLE_PER_CORE
    observed = [(index, s) for d, s in request.train_seconds.items()
                if s and (index := shard_index(d)) is not None and index < count]
    if observed:
        ratios = [seconds / max(float(size[index]) * SECONDS_PER_SAMPLE_PER_CORE / speed, 1e-12)
                  for index, seconds in observed]
        work = work * median(ratios)
    return work
