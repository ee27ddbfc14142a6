"""Device selection for learning periods shared by competing tasks (pure: no kopf, kubernetes, minio or torch).

Runtimes call `collection.decide_period(requests, nodes, pods, now, ...)` with one `DeviceRequest` per task that
needs devices (`build_device_request` makes one from a FederatedTask): once the learning period is due it calls
`select_devices` for all of them at once, which minimises the period's cost (objective.py: time plus weighted
unfairness) with the joint solver (joint.py). The planner folds observed train-pod durations into
`status.trainSecondsEstimate` with `update_train_estimate`.
"""
from .estimates import jain_index, update_train_estimate, update_train_estimates
from .request import build_device_request
from .select import POLICIES, select_devices
from .types import Assignment, DeviceRequest, DeviceSlot, TaskAssignment

__all__ = [
    "POLICIES", "Assignment", "DeviceRequest", "DeviceSlot", "TaskAssignment", "build_device_request", "jain_index",
    "select_devices", "update_train_estimate", "update_train_estimates",
]
