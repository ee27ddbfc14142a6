"""A task's demand for one learning period, built from its parsed FederatedTask (pure)."""
from __future__ import annotations

import math
from typing import Any

from ..compaction import participation_default, round_devices
from ..conditions import parse_time
from ..schema import encode
from ..spec import FederatedTask, ResourceRequirements
from ..status_types import TaskStatusDict
from .types import DeviceRequest


def build_device_request(task: FederatedTask, now: float | None = None, *, status: TaskStatusDict | None = None,
                         per_round: int | None = None) -> DeviceRequest:
    """What `task` asks the scheduler for in the coming period: perRound devices of its spec, with its fairness and
    time history from status (participation, trainSecondsEstimate, the devices' sample counts, waitingSince,
    periodTime), its fairness weight (None: the runtime's default) and its device pool.

    `now` (epoch seconds) stands in for waitingSince when the task is not recorded as waiting yet, so a task that
    starts to wait in this period ages from now on. `status` (the status as stored, camelCase; default: the task's
    own) and `per_round` (default: spec.devices.perRound) let the planner ask mid-round for replacements."""
    spec = task.spec
    status = encode(task.status) if status is None else status
    samples: dict[str, int] = {}
    for record in round_devices(status, task.name):
        count = sample_count(record.get("result"))
        if count:
            samples[record["device"]] = count
    waiting_since = parse_time(status["waitingSince"]).timestamp() if status.get("waitingSince") else now
    period_time = parse_time(status["periodTime"]).timestamp() if status.get("periodTime") else None
    return DeviceRequest(
        task=task.key,
        per_round=spec.devices.per_round if per_round is None else per_round,
        requests=effective_requests(spec.devices.resources),
        selector=encode(spec.devices.selector),
        tolerations=tuple(encode(toleration) for toleration in spec.devices.tolerations),
        node_devices=spec.data.source != "builtin",
        shard_count=int(status.get("shardCount") or spec.devices.count or 0),
        priority=spec.scheduling.priority,
        policy=spec.scheduling.policy,
        waiting_since=waiting_since,
        participation=dict(status.get("participation") or {}),
        participation_default=participation_default(status),
        train_seconds=dict(status.get("trainSecondsEstimate") or {}),
        samples=samples,
        round=max(int(status.get("round") or 1), 1),
        fairness_weight=spec.scheduling.fairness_weight,
        pool=spec.devices.pool,
        ready_since=_later(waiting_since, period_time),
    )


def effective_requests(resources: ResourceRequirements) -> dict[str, Any]:
    """What a train pod requests once the API server has defaulted it: a resource given only as a limit requests its
    limit (Kubernetes' rule for every resource; fedtask also writes it out for extended ones such as nvidia.com/gpu)."""
    return {**resources.limits, **resources.requests}


def _later(first: float | None, second: float | None) -> float | None:
    """The collection for the next period starts when the task began to wait, or at the last period it took part in
    without getting devices (it waits on), whichever is later."""
    if first is None or second is None:
        return first if second is None else second
    return max(first, second)


def sample_count(result: Any) -> int:
    """The sample count a train result reports (0 when it reports none or nonsense)."""
    value = result.get("num_samples") if isinstance(result, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return int(value)
    return 0
