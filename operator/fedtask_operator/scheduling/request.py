"""A task's demand for one learning period, built from its parsed FederatedTask (pure)."""
from __future__ import annotations

from ..conditions import parse_time
from ..spec import FederatedTask, encode
from .types import DeviceRequest


def build_device_request(task: FederatedTask, now: float | None = None) -> DeviceRequest:
    """What `task` asks the scheduler for in the coming period: perRound devices of its spec, with its fairness and
    time history from status (participation, trainSecondsEstimate, the devices' sample counts, waitingSince).

    `now` (epoch seconds) stands in for waitingSince when the task is not recorded as waiting yet, so a task that
    starts to wait in this period ages from now on."""
    spec, status = task.spec, task.status
    samples = {}
    for record in status.devices:
        result = record.result or {}
        if isinstance(result.get("num_samples"), int) and result["num_samples"] > 0:
            samples[record.device] = result["num_samples"]
    waiting_since = parse_time(status.waiting_since).timestamp() if status.waiting_since else now
    return DeviceRequest(
        task=task.key,
        per_round=spec.devices.per_round,
        requests=dict(spec.devices.resources.requests),
        selector=encode(spec.devices.selector),
        tolerations=tuple(encode(toleration) for toleration in spec.devices.tolerations),
        node_devices=spec.data.source != "builtin",
        shard_count=int(status.shard_count or spec.devices.count or 0),
        priority=spec.scheduling.priority,
        policy=spec.scheduling.policy,
        waiting_since=waiting_since,
        participation=dict(status.participation),
        train_seconds=dict(status.train_seconds_estimate),
        samples=samples,
        round=max(int(status.round or 1), 1),
    )
