"""A FederatedTask's status records as the code reads and writes them: TypedDicts with the camelCase keys the API
server stores (pure, types only).

Each mirrors an API dataclass of spec.py field for field (`ConditionDict` is `Condition`, `RoundRecordDict` is
`RoundRecord`, `TaskStatusDict` is `TaskStatus`, ...); tests/unit/test_status_types.py keeps them and the CRD's status
schema in agreement (keys, required keys and value types), so they cannot drift.

Every key may be missing (`total=False`) except the ones the CRD requires: the planner leaves out what it does not know
yet and never stores null (an API server drops null fields), so a value that is present is never None.
Timestamps are RFC 3339 strings (2026-11-28T04:41:03Z). State and phase values are the constants of phases.py.
"""
# No `from __future__ import annotations` here: on Python 3.11 it would hide `Required` from TypedDict, which then
# counts every key as optional at run time (__required_keys__), and the schema test reads that.
from typing import Any, Required, TypedDict, final


class ConditionDict(TypedDict, total=False):
    """`status.conditions[]` (spec.Condition); conditions.py builds and reads them."""

    type: Required[str]  # Ready, Progressing, Unschedulable, ... (the constants of conditions.py)
    status: Required[str]  # "True", "False" or "Unknown"
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


# final: the planner's pod-record code tells these three apart by their keys (`"device" in record`), which mypy
# narrows for final TypedDicts only.
@final
class DeviceStatusDict(TypedDict, total=False):
    """`status.devices[]` (spec.DeviceStatus): one target device of the current round and its train pod."""

    device: str
    node: str
    pod: str
    state: str  # phases.STATES
    reason: str
    attempts: int
    startTime: str
    finishTime: str
    result: dict[str, Any]  # the train stage's result (num_samples, loss, seconds, bytes), free-form
    outages: int  # attempts that ended in a store outage (exit 3), within attempts
    outageSince: str
    retryAfter: str


@final
class StagePodStatusDict(TypedDict, total=False):
    """`status.current` (spec.StagePodStatus): the current server-side pod (init, aggregate or adjust)."""

    stage: str
    pod: str
    state: str  # phases.STATES
    reason: str
    attempts: int
    startTime: str
    finishTime: str
    result: dict[str, Any]
    outages: int  # attempts that ended in a store outage (exit 3), within attempts
    outageSince: str
    retryAfter: str


@final
class PublishStatusDict(TypedDict, total=False):
    """`status.published[]` (spec.PublishStatus): one publish pod per device node."""

    node: str
    pod: str
    state: str  # phases.STATES
    reason: str
    attempts: int
    startTime: str  # when the current pod was created (spec.stageTimeoutSeconds count from here)
    finishTime: str
    result: dict[str, Any]
    outages: int  # attempts that ended in a store outage (exit 3), within attempts
    outageSince: str
    retryAfter: str


class AssignedDeviceDict(TypedDict, total=False):
    """`status.assignment[]` (spec.AssignedDevice): the scheduler's choice of one device for this round."""

    device: str
    node: str
    estimatedSeconds: float


class RoundRecordDict(TypedDict, total=False):
    """`status.currentRound` and `status.history[]` (spec.RoundRecord): one round, filled in stage by stage."""

    round: int
    devices: list[str]
    returned: list[str]
    excluded: list[str]
    rejected: list[str]
    accuracy: float  # or evaluation.function's score; the test split's
    loss: float
    validationAccuracy: float  # the validation split's: what targetAccuracy, patience and best go by
    validationLoss: float
    startTime: str
    durationSeconds: float
    trainSeconds: float
    aggregateSeconds: float
    adjustSeconds: float
    samples: int
    uri: str
    period: int
    deviceCount: int  # the lengths of the four lists above, which compaction.py caps
    returnedCount: int
    excludedCount: int
    rejectedCount: int


class ModelRefDict(TypedDict, total=False):
    """`status.model` and `status.best` (spec.ModelRef): a published global model."""

    uri: str
    round: int
    accuracy: float
    validationAccuracy: float


class TaskStatusDict(TypedDict, total=False):
    """The whole `status` (spec.TaskStatus)."""

    phase: str  # phases.PHASES
    round: int
    stage: str  # phases.STAGES
    accuracy: float  # the test split's
    validationAccuracy: float
    evaluation: str  # which split each accuracy is measured on
    observedGeneration: int
    shardCount: int
    message: str
    conditions: list[ConditionDict]
    devices: list[DeviceStatusDict]
    deviceRows: list[str]  # a large round's devices, packed (compaction.py); then `devices` is absent
    deviceNodes: list[str]
    deviceReasons: list[str]
    current: StagePodStatusDict
    published: list[PublishStatusDict]
    assignment: list[AssignedDeviceDict]
    assignmentCount: int
    currentRound: RoundRecordDict
    history: list[RoundRecordDict]
    model: ModelRefDict
    best: ModelRefDict
    participation: dict[str, int]
    participationDefault: int
    trainSecondsEstimate: dict[str, float]
    waitingSince: str
    period: int
    periodTime: str
    fairness: float
    roundStartTime: str
    startTime: str
    completionTime: str
