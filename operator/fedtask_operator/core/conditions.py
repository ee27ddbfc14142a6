"""Status conditions of a FederatedTask: types, reasons (constants) and pure helpers.

Conditions are keyed by type. `set_condition` returns a new list and changes `lastTransitionTime` only when the
condition's status flips, so writing the same state twice yields an identical status (no needless patches).
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from fedtask_operator.core.status_types import ConditionDict

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"

# Condition types
READY = "Ready"  # the task is running normally (or finished successfully)
PROGRESSING = "Progressing"  # rounds are advancing
UNSCHEDULABLE = "Unschedulable"  # too few devices qualify; the message says which resource was short where
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
STALLED = "Stalled"  # the task cannot progress without a change from the user (the message says what)

# Reasons (CamelCase constants; the message carries the details)
REASON_INITIALIZING = "Initializing"
REASON_SCHEDULING = "Scheduling"
REASON_WAITING_FOR_DEVICES = "WaitingForDevices"  # other tasks hold the devices this period
REASON_ROUND_RUNNING = "RoundRunning"
REASON_TRAINING = "Training"
REASON_AGGREGATING = "Aggregating"
REASON_ADJUSTING = "Adjusting"
REASON_INSUFFICIENT_DEVICES = "InsufficientDevices"  # fewer qualifying nodes than needed
REASON_INSUFFICIENT_RESOURCES = "InsufficientResources"  # nodes match but lack free cpu/memory/gpu
REASON_NO_MATCHING_NODES = "NoMatchingNodes"  # the selector matches no node
REASON_STRAGGLER_EXCLUDED = "StragglerExcluded"  # an event: the round went on without a late device
REASON_DEVICE_REPLACED = "DeviceReplaced"
REASON_POD_FAILED = "PodFailed"
REASON_POD_NOT_STARTING = "PodNotStarting"  # a pod stays Pending: image pull, container config or kube-scheduler
REASON_POD_CREATION_FAILED = "PodCreationFailed"  # the API server refused a pod (403, 422, ...)
REASON_POD_RETRY_LIMIT_EXCEEDED = "PodRetryLimitExceeded"
REASON_STORE_UNAVAILABLE = "StoreUnavailable"  # pods kept exiting 3 (store outage) beyond spec.storeOutageSeconds
REASON_STAGE_DEADLINE_EXCEEDED = "StageDeadlineExceeded"  # a server-side stage pod outlived spec.stageTimeoutSeconds
REASON_NODE_LOST = "NodeLost"  # an event: a pod's node was deleted or NotReady beyond the grace period
REASON_STATUS_UNREADABLE = "StatusUnreadable"  # status.deviceRows written by something else than the operator
REASON_QUORUM_NOT_REACHED = "QuorumNotReached"  # the round deadline passed with fewer than minReturned updates
REASON_ALL_UPDATES_REJECTED = "AllUpdatesRejected"
REASON_DEADLINE_EXCEEDED = "DeadlineExceeded"  # spec.activeDeadlineSeconds
REASON_INVALID_SPEC = "InvalidSpec"
REASON_STAGE_FAILED = "StageFailed"
REASON_MAX_ROUNDS_REACHED = "MaxRoundsReached"
REASON_TARGET_ACCURACY_REACHED = "TargetAccuracyReached"
REASON_NO_IMPROVEMENT = "NoImprovement"  # rounds.patience rounds without a better accuracy
REASON_COMPLETED = "Completed"
REASON_SUSPENDED = "SuspendedByUser"
REASON_RESUMED = "Resumed"
REASON_SCHEDULABLE = "Schedulable"


def format_time(now: datetime | str) -> str:
    """RFC 3339 in UTC with second precision, the form Kubernetes uses (2026-11-28T04:41:03Z)."""
    if isinstance(now, str):
        return now
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (Lease.spec.renewTime and acquireTime): RFC 3339 in UTC with microseconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def get_condition(conditions: Sequence[ConditionDict] | None, type_: str) -> ConditionDict | None:
    for condition in conditions or []:
        if condition.get("type") == type_:
            return condition
    return None


def is_true(conditions: Sequence[ConditionDict] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.get("status") == TRUE


def set_condition(conditions: Sequence[ConditionDict] | None, type_: str, status: str | bool, reason: str, message: str,
                  now: datetime | str, observed_generation: int | None = None) -> list[ConditionDict]:
    """A new condition list with `type_` set; lastTransitionTime changes only when the status flips."""
    if isinstance(status, bool):
        status = TRUE if status else FALSE
    if status not in (TRUE, FALSE, UNKNOWN):
        raise ValueError(f"condition status must be True, False or Unknown, not {status!r}")
    previous = get_condition(conditions, type_)
    transition = format_time(now)
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = previous["lastTransitionTime"]
    updated: ConditionDict = {"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": transition}
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation
    out: list[ConditionDict] = []
    replaced = False
    for condition in conditions or []:
        if condition.get("type") == type_:
            if not replaced:
                out.append(updated)
                replaced = True
        else:
            out.append(condition.copy())
    if not replaced:
        out.append(updated)
    return out


def remove_condition(conditions: Sequence[ConditionDict] | None, type_: str) -> list[ConditionDict]:
    return [c.copy() for c in conditions or [] if c.get("type") != type_]
