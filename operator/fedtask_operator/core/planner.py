"""The round planner: from one FederatedTask and its observed pods, the next actions (pure).

`plan_task` is the whole control loop of one task as one pure function, shared by the Kubernetes operator and the
local runtime. All state lives in `task["status"]` and in the pods that exist; the same input gives the same plan.

How a runtime uses a plan:
1. if `plan.needs_devices`: run the scheduler with `plan.device_request` (and the other tasks' requests), call
   `plan_task` again with this task's `TaskAssignment`, and apply only that second plan;
2. `apply.apply_plan(plan, sink)`: the one order (status, creations, deletions, events, task deletion) that both
   runtimes and the planner tests share;
3. reconcile again when a pod of the task changes, after `plan.requeue_after` seconds, and after a plan that acted
   (a finished stage's pods are deleted by the next plan).

A pod is deleted only when the status given to the planner already holds its result (or it has none: it is still
running and no longer wanted), so a crash between any two steps loses nothing: missing pods are recreated under the
same deterministic name, finished pods are recorded, pods of older rounds are cleaned up.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from fedtask_operator.core import conditions, naming, pods
from fedtask_operator.core.compaction import (
    CompactionError,
    compact,
    count_round,
    expand,
    participation_default,
    round_count,
)
from fedtask_operator.core.confinement import confinement_errors
from fedtask_operator.core.kube_types import KubeObject
from fedtask_operator.core.phases import (
    ADJUSTING,
    AGGREGATING,
    FAILED,
    FINISHED_PHASES,
    INITIALIZING,
    PENDING,
    POD_FAILED,
    POD_PENDING,
    POD_RUNNING,
    POD_SUCCEEDED,
    PUBLISHING,
    RUNNING,
    SCHEDULING,
    STATE_EXCLUDED,
    STATE_FAILED,
    STATE_PENDING,
    STATE_RUNNING,
    STATE_SUCCEEDED,
    SUCCEEDED,
    SUSPENDED,
    TRAINING,
    UNFINISHED_STATES,
)
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling.estimates import jain_index, update_train_estimate
from fedtask_operator.core.scheduling.matching import matches_selector
from fedtask_operator.core.scheduling.request import build_device_request, sample_count
from fedtask_operator.core.scheduling.types import DeviceRequest, DeviceSlot, TaskAssignment
from fedtask_operator.core.schema import encode
from fedtask_operator.core.spec import HISTORY_LIMIT, FederatedTask, SpecError, TaskSpec, parse_task
from fedtask_operator.core.status_types import (
    AssignedDeviceDict,
    DeviceStatusDict,
    ModelRefDict,
    PublishStatusDict,
    RoundRecordDict,
    StagePodStatusDict,
    TaskStatusDict,
)
from fedtask_operator.core.store_access import store_uri_errors

PodRecord: TypeAlias = DeviceStatusDict | StagePodStatusDict | PublishStatusDict
"""A record of one pod in the status: a device's train pod, the server-side stage pod, or a publish pod."""

EXIT_BAD_INPUT = 2  # the worker's exit code for bad input: retrying cannot help
EXIT_STORE_UNAVAILABLE = 3  # the worker's exit code when the store stayed down through its own retries
# A pod that exits EXIT_STORE_UNAVAILABLE is retried after a backoff that doubles within these bounds (jittered
# 0.5-1.5x by the pod's name), not counted against spec.podRetryLimit, until spec.storeOutageSeconds have passed since
# the record's first such exit.
STORE_OUTAGE_RETRY_SECONDS = (5.0, 60.0)
# A pod whose node is NotReady (Ready False or Unknown) spec.nodeLostGraceSeconds long, or whose node is gone, is given
# up: a train pod's device fails (and is replaced), a server-side stage or publish pod is replaced by its next attempt
# (counted against podRetryLimit). Kubernetes itself evicts such pods only after 300 s, and a deleted node's pods stay
# Terminating.
UNSCHEDULABLE_RETRY_SECONDS = 10.0
TERMINATING_RETRY_SECONDS = 1.0
# A pod creation the API server refuses (403: Pod Security, quota, a missing PriorityClass; 400/422: invalid) is
# retried with a backoff that doubles (the time since the first refusal, within these bounds), and the task fails at
# the first refusal that comes POD_CREATION_GIVE_UP_SECONDS or more after the first one (a time bound: it is kept
# in the status, as the Stalled condition's lastTransitionTime, so an operator restart does not reset it).
POD_CREATION_RETRY_SECONDS = (5.0, 60.0)
POD_CREATION_GIVE_UP_SECONDS = 600.0


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class CreationRefusal:
    """A pod the API server refused to create (any error but AlreadyExists), with the server's own message."""

    pod: str
    code: int  # the HTTP status: 403, 422, 400, ...
    message: str


@dataclass(frozen=True)
class Observed:
    pods: list[KubeObject]  # this task's pods, as Kubernetes objects with status
    now: datetime  # timezone-aware
    nodes: list[KubeObject] | None = None  # candidate nodes, only needed to publish to every device node
    # What became of the creations of the runtime's previous plan: None when it created nothing (or does not know),
    # () when the API server accepted them all, else the refusals.
    creation_refusals: tuple[CreationRefusal, ...] | None = None


@dataclass
class Plan:
    create: list[KubeObject] = field(default_factory=list)  # pod manifests
    delete: list[str] = field(default_factory=list)  # pod names
    status: TaskStatusDict = field(default_factory=TaskStatusDict)  # the complete new status
    events: list[Event] = field(default_factory=list)
    needs_devices: bool = False
    requeue_after: float | None = None
    device_request: DeviceRequest | None = None  # what to ask the scheduler for when needs_devices
    delete_task: bool = False  # spec.ttlSecondsAfterFinished has passed: the runtime deletes the task itself
    # creations were refused: the runtime creates no pod of this task for this many seconds (its backoff)
    hold_creations_seconds: float | None = None


# --------------------------------------------------------------------------------------------------------------------
# Observing pods


@dataclass(frozen=True)
class PodOutcome:
    """What one observed pod says: still going, finished with a result, or failed (and why)."""

    state: str  # "Missing" | "Terminating" | STATE_PENDING | STATE_RUNNING | STATE_SUCCEEDED | STATE_FAILED
    result: dict[str, Any] | None = None
    reason: str = ""
    retryable: bool = True
    store_outage: bool = False  # exited EXIT_STORE_UNAVAILABLE


def observe_pod(pod: KubeObject | None) -> PodOutcome:
    if pod is None:
        return PodOutcome("Missing")
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return PodOutcome("Terminating")
    status = pod.get("status") or {}
    phase = status.get("phase") or POD_PENDING
    terminated = _terminated_state(status)
    if phase == POD_SUCCEEDED:
        result = _parse_result(terminated.get("message"))
        if result is None:
            return PodOutcome(STATE_FAILED,
                              reason="the pod succeeded but wrote no JSON result to its termination message")
        return PodOutcome(STATE_SUCCEEDED, result=result)
    if phase == POD_FAILED:
        exit_code = terminated.get("exitCode")
        return PodOutcome(STATE_FAILED, reason=_failure_reason(status, terminated),
                          retryable=exit_code != EXIT_BAD_INPUT, store_outage=exit_code == EXIT_STORE_UNAVAILABLE)
    if phase == POD_RUNNING:
        return PodOutcome(STATE_RUNNING)
    return PodOutcome(STATE_PENDING, reason=_not_starting_reason(status))


# Why a pending pod will not start by itself (the kubelet or kube-scheduler says so).
_STUCK_WAITING_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                          "CreateContainerError")


def _not_starting_reason(pod_status: KubeObject) -> str:
    for container in pod_status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _STUCK_WAITING_REASONS:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
    for condition in pod_status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason') or 'Unschedulable'}: {condition.get('message') or ''}".rstrip(": ")
    return ""


def _terminated_state(pod_status: KubeObject) -> KubeObject:
    container_statuses = pod_status.get("containerStatuses") or []
    if not container_statuses:
        return {}
    return (container_statuses[0].get("state") or {}).get("terminated") or {}


def _parse_result(message: str | None) -> dict[str, Any] | None:
    try:
        result = json.loads(message or "")
    except ValueError:
        return None
    return _finite_only(result) if isinstance(result, dict) else None


def _finite_only(value: Any) -> Any:
    """The JSON value without NaN/Infinity (an API server refuses them; Python's json reads them)."""
    if isinstance(value, dict):
        return {key: _finite_only(item) for key, item in value.items()
                if not (isinstance(item, float) and not math.isfinite(item))}
    if isinstance(value, list):
        return [_finite_only(item) for item in value if not (isinstance(item, float) and not math.isfinite(item))]
    return value


def _failure_reason(pod_status: KubeObject, terminated: KubeObject) -> str:
    parts = []
    if "exitCode" in terminated:
        parts.append(f"exit code {terminated['exitCode']}")
    reason = terminated.get("reason") or pod_status.get("reason")
    if reason:
        parts.append(str(reason))
    message = terminated.get("message") or pod_status.get("message") or ""
    parsed = _parse_result(message)
    if parsed is not None and parsed.get("error"):
        message = str(parsed["error"])
    message = message.strip().splitlines()[-1] if message.strip() else ""
    if message:
        parts.append(message[:300])
    return ": ".join(parts) if parts else "the pod failed"


# --------------------------------------------------------------------------------------------------------------------
# Time


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds: stage durations of local runs are often below a second."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds_between(start: str | None, end: datetime) -> float:
    if not start:
        return 0.0
    return round(max(0.0, (end - conditions.parse_time(start)).total_seconds()), 3)


# --------------------------------------------------------------------------------------------------------------------
# One planning pass


class _Planning:
    """The new status and the actions of one pass, built up by the stage functions below."""

    def __init__(self, task: FederatedTask, status: TaskStatusDict, observed: Observed, config: RuntimeConfig,
                 assignment: TaskAssignment | None) -> None:
        self.task = task
        self.spec = task.spec
        self.config = config
        self.now = observed.now
        self.nodes = observed.nodes
        self.assignment = assignment
        self.input_status = expand(status, task.name)  # a large round's devices are packed in the stored status
        self.status = copy.deepcopy(self.input_status)
        self.pods = {pod["metadata"]["name"]: pod for pod in observed.pods}
        self.create: list[KubeObject] = []
        self.events: list[Event] = []
        self.needs_devices = False
        self.device_request: DeviceRequest | None = None
        self.requeue: list[float] = []
        self.keep: set[str] = set()  # pods the current stage still owns
        self.delete_task = False
        self.not_starting: list[str] = []  # "pod: why" for pending pods that will not start by themselves
        self.creation_refusals = observed.creation_refusals
        self.hold_creations: float | None = None
        self.universe: set[str] = set()  # the task's devices, when _update_fairness worked them out
        self.node_by_name = {node["metadata"]["name"]: node for node in observed.nodes or []}

    @property
    def round(self) -> int:
        return int(self.status.get("round") or 0)

    def build_task(self) -> FederatedTask:
        """The task as the pod builders must see it: with this pass's round and shard count."""
        status = self.task.status
        round_, shards = self.status.get("round"), self.status.get("shardCount")
        if status.round != round_ or status.shard_count != shards:
            status = dataclasses.replace(status, round=round_, shard_count=shards)
            self.task = dataclasses.replace(self.task, status=status)
        return self.task

    @property
    def stamp(self) -> str:
        return timestamp(self.now)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.status["conditions"] = conditions.set_condition(
            self.status.get("conditions"), type_, status, reason, message, self.now, self.task.generation)

    def progressing(self, reason: str, message: str) -> None:
        self.condition(conditions.PROGRESSING, True, reason, message)
        self.status["message"] = message

    def plan(self) -> Plan:
        requeue = min(self.requeue) if self.requeue else None
        return Plan(create=self.create, delete=self._deletions(), status=compact(self.status, self.universe),
                    events=self.events, needs_devices=self.needs_devices, requeue_after=requeue,
                    device_request=self.device_request, delete_task=self.delete_task,
                    hold_creations_seconds=self.hold_creations)

    def _deletions(self) -> list[str]:
        unrecorded = pods_awaiting_results(self.input_status)
        failed_task = self.status.get("phase") == FAILED
        delete = []
        for name, pod in sorted(self.pods.items()):
            state = observe_pod(pod).state
            if state == "Terminating" or name in self.keep:
                continue
            finished = state in (STATE_SUCCEEDED, STATE_FAILED)
            if finished and (name in unrecorded or failed_task or self.config.keep_finished_pods):
                continue  # its result goes into status first; a failed task keeps its pods for inspection
            delete.append(name)
        return delete


def pods_awaiting_results(status: TaskStatusDict, task_name: str = "") -> set[str]:
    """Pods whose results the status does not hold yet: they must not be deleted. A stored status whose devices
    are packed (compaction.py) needs the task's name, which the pod names are made of."""
    if status.get("deviceRows"):
        if not task_name:
            raise ValueError("the status holds packed device rows: pass the task's name")
        status = expand(status, task_name)
    return {record["pod"] for record in _pod_records(status)
            if record.get("state") in UNFINISHED_STATES and record.get("pod")}


def _pod_records(status: TaskStatusDict) -> list[PodRecord]:
    """Every pod record of the status: this round's devices, the server-side stage pod, the publish pods."""
    if status.get("deviceRows"):
        raise ValueError("the status holds packed device rows: compaction.expand it first")
    current = [status["current"]] if status.get("current") else []
    return [*(status.get("devices") or []), *current, *(status.get("published") or [])]


@dataclass(frozen=True)
class _Progress:
    state: str  # STATE_PENDING | STATE_RUNNING | STATE_SUCCEEDED | STATE_FAILED (after the retries)
    result: dict[str, Any] | None = None
    reason: str = ""
    bad_input: bool = False  # failed with the worker's bad-input exit code (not retried)
    store_outage: bool = False  # the store stayed down beyond spec.storeOutageSeconds
    overdue: bool = False  # the last attempt outlived spec.stageTimeoutSeconds

    @property
    def failure_reason(self) -> str:
        """The condition reason of a stage that failed for good."""
        if self.store_outage:
            return conditions.REASON_STORE_UNAVAILABLE
        if self.overdue:
            return conditions.REASON_STAGE_DEADLINE_EXCEEDED
        return conditions.REASON_STAGE_FAILED if self.bad_input else conditions.REASON_POD_RETRY_LIMIT_EXCEEDED


def _advance_pod(ctx: _Planning, record: PodRecord, build: Callable[[int], KubeObject], what: str,
                 deadline: float | None = None) -> _Progress:
    """Move one pod record on: create its pod when missing, retry a failed pod, report a result.

    `record` holds `pod` (the current attempt's name) and `attempts` (failed attempts so far); `build(attempt)`
    returns the pod manifest of an attempt. The caller stores the result or the failure in the status.
    """
    ctx.keep.add(record["pod"])
    outcome = observe_pod(ctx.pods.get(record["pod"]))
    if outcome.state == "Missing":
        wait = -_seconds_until_passed(record.get("retryAfter"), ctx.now)
        if wait > 0:  # the store-outage backoff
            ctx.requeue.append(wait)
            return _Progress(STATE_PENDING)
        record.pop("retryAfter", None)
        ctx.create.append(build(int(record.get("attempts") or 0)))
        return _Progress(STATE_PENDING)
    overdue, lost = False, ""
    if outcome.state in ("Terminating", STATE_PENDING, STATE_RUNNING):
        lost = _lost_node(ctx, ctx.pods.get(record["pod"]))
        late = _overdue(ctx, record, deadline)
        if lost:
            ctx.event(conditions.REASON_NODE_LOST, f"{what}: pod {record['pod']}: {lost}", warning=True)
            # a train pod is pinned to its device's node: its device gives up and is replaced
            outcome = PodOutcome(STATE_FAILED, reason=lost, retryable="device" not in record)
        elif late:
            outcome, overdue = PodOutcome(STATE_FAILED, reason=late), True
    if outcome.state == "Terminating":  # a pod of the same name is going away; create it again once it is gone
        ctx.requeue.append(TERMINATING_RETRY_SECONDS)
        return _Progress(STATE_PENDING)
    if outcome.state == STATE_PENDING and outcome.reason:
        ctx.not_starting.append(f"pod {record['pod']}: {outcome.reason}")
    if outcome.state in (STATE_PENDING, STATE_RUNNING, STATE_SUCCEEDED):
        return _Progress(outcome.state, outcome.result)
    attempts = int(record.get("attempts") or 0)
    if outcome.store_outage:
        return _retry_after_store_outage(ctx, record, build, what, outcome)
    limit = ctx.spec.pod_retry_limit
    if not outcome.retryable or attempts - int(record.get("outages") or 0) >= limit:
        why = f"podRetryLimit {limit} reached"
        if not outcome.retryable:
            why = "its node is lost, not retried" if lost else "bad input, not retried"
        return _Progress(STATE_FAILED, reason=f"pod {record['pod']} failed ({why}): {outcome.reason}",
                         bad_input=not outcome.retryable and not lost, overdue=overdue)
    manifest = build(attempts + 1)
    ctx.event(conditions.REASON_POD_FAILED,
              f"{what}: pod {record['pod']} failed ({outcome.reason}); retrying as {manifest['metadata']['name']} "
              f"(retry {attempts + 1 - int(record.get('outages') or 0)} of {limit})", warning=True)
    record["attempts"] = attempts + 1
    record["pod"] = manifest["metadata"]["name"]
    ctx.keep.add(record["pod"])
    ctx.create.append(manifest)
    return _Progress(STATE_PENDING)


def _retry_after_store_outage(ctx: _Planning, record: PodRecord, build: Callable[[int], KubeObject], what: str,
                              outcome: PodOutcome) -> _Progress:
    """The pod exited 3: the store stayed down through the worker's retries. The next attempt waits for a backoff
    and is not counted against podRetryLimit, until spec.storeOutageSeconds have passed since the first such exit."""
    attempts, outages = int(record.get("attempts") or 0), int(record.get("outages") or 0)
    since = record.get("outageSince") or ctx.stamp
    elapsed = _seconds_between(since, ctx.now)
    budget = ctx.spec.store_outage_seconds
    if elapsed >= budget:
        return _Progress(STATE_FAILED, store_outage=True,
                         reason=f"pod {record['pod']} failed: the store was unreachable for {elapsed:.0f}s "
                                f"({outages + 1} attempts), beyond spec.storeOutageSeconds={budget}: "
                                f"{outcome.reason}; check the store (its endpoint, its health) and raise "
                                "spec.storeOutageSeconds to wait longer")
    low, high = STORE_OUTAGE_RETRY_SECONDS
    jitter = 0.5 + int(naming.short_hash(record["pod"]), 16) / 16 ** naming.HASH_LENGTH
    delay = round(min(low * 2 ** outages, high) * jitter, 3)
    manifest = build(attempts + 1)
    ctx.event(conditions.REASON_STORE_UNAVAILABLE,
              f"{what}: pod {record['pod']} could not reach the store ({outcome.reason}); retrying as "
              f"{manifest['metadata']['name']} in {delay:.0f}s (not counted against podRetryLimit; the outage began "
              f"{elapsed:.0f}s ago, the task gives up after spec.storeOutageSeconds={budget})", warning=True)
    record.update({"attempts": attempts + 1, "outages": outages + 1, "outageSince": since,
                   "retryAfter": timestamp(ctx.now + timedelta(seconds=delay)), "pod": manifest["metadata"]["name"]})
    ctx.keep.add(record["pod"])
    ctx.requeue.append(delay)
    return _Progress(STATE_PENDING)


def _lost_node(ctx: _Planning, pod: KubeObject | None) -> str:
    """Why the pod's node is lost (deleted, or NotReady for spec.nodeLostGraceSeconds), else "" (and a requeue for
    when the grace period ends). Only when the runtime passed the nodes."""
    node_name = naming.pinned_node(pod) if pod else None  # bound, or pinned by pods.py before binding
    if ctx.nodes is None or not node_name:
        return ""
    node = ctx.node_by_name.get(node_name)
    if node is None:
        return f"its node {node_name} was deleted"
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == conditions.TRUE:
        return ""
    since = ready.get("lastTransitionTime")
    grace = float(ctx.spec.node_lost_grace_seconds)
    down_for = _seconds_between(since, ctx.now) if since else grace
    if down_for < grace:
        ctx.requeue.append(round(grace - down_for, 3))
        return ""
    return (f"its node {node_name} has been NotReady ({ready.get('reason') or ready.get('status')}) for "
            f"{down_for:.0f}s, beyond spec.nodeLostGraceSeconds={grace:.0f}")


def _overdue(ctx: _Planning, record: PodRecord, deadline: float | None) -> str:
    """Why the record's current attempt is past `deadline` seconds from its start, else "" (and a requeue)."""
    start = record.get("startTime") if "startTime" in record else None
    if deadline is None or not isinstance(start, str):
        return ""
    elapsed = _seconds_between(start, ctx.now)
    if elapsed < deadline:
        ctx.requeue.append(round(deadline - elapsed, 3))
        return ""
    return f"no result {elapsed:.0f}s after the pod was created, {_DEADLINE_PHRASE}{deadline:.0f}"


_DEADLINE_PHRASE = "beyond spec.stageTimeoutSeconds="  # in the reason of an attempt that outlived its deadline


def _seconds_until_passed(moment: str | None, now: datetime) -> float:
    """Seconds since `moment` (negative before it; 0 when there is none)."""
    if not moment:
        return 0.0
    return (now - conditions.parse_time(moment)).total_seconds()


# --------------------------------------------------------------------------------------------------------------------
# The entry point


def plan_task(task: KubeObject, observed: Observed, config: RuntimeConfig,
              assignment: TaskAssignment | None = None) -> Plan:
    """The next actions for one FederatedTask: pods to create and delete, its new status, events."""
    try:
        # the status is the planner's own record, read as plain data: decoding it would cost more than planning
        parsed = parse_task({key: value for key, value in task.items() if key != "status"})
    except SpecError as error:
        return _plan_invalid_spec(task, observed, error)
    confined = confinement_errors(parsed.spec, config.confinement)  # host paths, tolerations, ... the operator allows
    if confined:
        return _plan_invalid_spec(task, observed, SpecError(confined))
    store_errors = store_uri_errors(parsed, config)  # the runtime's store decides what a task may name in it
    if store_errors:
        return _plan_invalid_spec(task, observed, SpecError(store_errors))
    try:
        ctx = _Planning(parsed, task.get("status") or {}, observed, config, assignment)
    except CompactionError as error:
        return _plan_unreadable_status(task, observed, error)
    _plan(ctx)
    return ctx.plan()


def _plan_unreadable_status(task: KubeObject, observed: Observed, error: CompactionError) -> Plan:
    """The stored status holds device rows the planner cannot read (something else wrote them): the task fails and
    says so, its running pods are stopped (its round cannot be finished without knowing its devices)."""
    status: TaskStatusDict = copy.deepcopy(task.get("status") or TaskStatusDict())
    for key in ("deviceRows", "deviceNodes", "deviceReasons"):
        status.pop(key, None)  # type: ignore[misc]
    message = (f"{error}; the status was changed by something other than the operator: recreate the task (its "
               "models so far are in the store)")
    status.update({"phase": FAILED, "message": message, "completionTime": conditions.format_time(observed.now)})
    for type_, value in ((conditions.FAILED, True), (conditions.READY, False), (conditions.PROGRESSING, False)):
        status["conditions"] = conditions.set_condition(status.get("conditions"), type_, value,
                                                        conditions.REASON_STATUS_UNREADABLE, message, observed.now,
                                                        (task.get("metadata") or {}).get("generation"))
    running = sorted(pod["metadata"]["name"] for pod in observed.pods
                     if observe_pod(pod).state in (STATE_PENDING, STATE_RUNNING))
    return Plan(delete=running, status=status,
                events=[Event("Warning", conditions.REASON_STATUS_UNREADABLE, message)])


def _plan(ctx: _Planning) -> None:
    status = ctx.status
    status["observedGeneration"] = ctx.task.generation
    if _is_failed_invalid_spec(status):
        # the spec was fixed before the task ever ran: start afresh. (mypy gives TypedDicts no clear(), as it could
        # drop required keys; TaskStatusDict has none.)
        status.clear()  # type: ignore[attr-defined]
        status["observedGeneration"] = ctx.task.generation
    if status.get("phase") in FINISHED_PHASES:
        _plan_finished(ctx)
        return
    if not status.get("phase"):
        _start_task(ctx)
    if ctx.spec.suspend:
        _suspend(ctx)
        return
    if status.get("phase") == SUSPENDED:
        _resume(ctx)
    if _deadline_passed(ctx):
        return
    _run_stages(ctx)
    _report_pods_not_starting(ctx)
    _report_creation_refusals(ctx)
    _update_fairness(ctx)


def _update_fairness(ctx: _Planning) -> None:
    """status.fairness: Jain's index of the participation over the task's devices (every simulated device of builtin
    data; else the device nodes matching the selector when the runtime passed nodes, and every device that trained)."""
    participation = ctx.status.get("participation") or {}
    floor = participation_default(ctx.status)
    if not participation and not floor:
        return
    devices = set(participation)
    if ctx.spec.data.source == "builtin" and ctx.status.get("shardCount"):
        devices |= {naming.shard_device_id(i) for i in range(int(ctx.status["shardCount"]))}
    elif ctx.nodes is not None:
        selector = encode(ctx.spec.devices.selector)
        devices |= {node["metadata"]["name"] for node in ctx.nodes
                    if matches_selector(node["metadata"].get("labels") or {}, selector)}
    ctx.universe = devices
    ctx.status["fairness"] = round(jain_index([participation.get(device, floor) for device in devices]), 4)


def _run_stages(ctx: _Planning) -> None:
    """Run the current stage's planner; one that finishes its stage moves on, and the next stage plans at once."""
    for _ in range(len(_STAGE_PLANNERS) + 2):
        if ctx.status.get("phase") in FINISHED_PHASES:
            return
        if not _STAGE_PLANNERS[ctx.status["stage"]](ctx):
            return


def _report_pods_not_starting(ctx: _Planning) -> None:
    """Pods stuck before they start (image pull, config, kube-scheduler) hold the task up: say so, and what helps."""
    stalled: Mapping[str, Any] = conditions.get_condition(ctx.status.get("conditions"), conditions.STALLED) or {}
    if ctx.not_starting and ctx.status.get("phase") in (PENDING, RUNNING):
        message = (f"{_listed(ctx.not_starting, '; ', limit=3)}; check spec.image, spec.imagePullSecrets, "
                   "the store secret and the nodes' free resources")
        if stalled.get("status") != conditions.TRUE or stalled.get("message") != message:
            ctx.event(conditions.REASON_POD_NOT_STARTING, message, warning=True)
        ctx.condition(conditions.STALLED, True, conditions.REASON_POD_NOT_STARTING, message)
    elif stalled.get("reason") == conditions.REASON_POD_NOT_STARTING:
        ctx.status["conditions"] = conditions.remove_condition(ctx.status.get("conditions"), conditions.STALLED)


def _report_creation_refusals(ctx: _Planning) -> None:
    """Pods the API server refused to create: the Stalled condition and a Warning event carry its message, creations
    wait for a backoff, and the task fails once refusals go on POD_CREATION_GIVE_UP_SECONDS after the first."""
    refusals, status = ctx.creation_refusals, ctx.status
    stalled: Mapping[str, Any] = conditions.get_condition(status.get("conditions"), conditions.STALLED) or {}
    ours = stalled.get("reason") == conditions.REASON_POD_CREATION_FAILED and stalled.get("status") == conditions.TRUE
    if status.get("phase") not in (PENDING, RUNNING):
        return
    if refusals is not None and not refusals:
        if ours:  # the runtime's creations went through again
            status["conditions"] = conditions.remove_condition(status.get("conditions"), conditions.STALLED)
        return
    if not refusals:
        return
    first = conditions.parse_time(stalled["lastTransitionTime"]) if ours and stalled.get("lastTransitionTime") \
        else ctx.now
    elapsed = max(0.0, (ctx.now - first).total_seconds())
    refused = "; ".join(f"pod {r.pod}: {r.code} {r.message}" for r in refusals[:3])
    if len(refusals) > 3:
        refused += f"; and {len(refusals) - 3} more"
    if elapsed >= POD_CREATION_GIVE_UP_SECONDS:
        _fail(ctx, conditions.REASON_POD_CREATION_FAILED,
              f"the API server refused to create this task's pods for {elapsed:.0f}s: {refused}")
        return
    low, high = POD_CREATION_RETRY_SECONDS
    delay = round(min(max(elapsed, low), high), 3)
    message = (f"the API server refused to create this task's pods: {refused}; retrying in {delay:.0f}s, the task "
               f"fails if they are still refused {POD_CREATION_GIVE_UP_SECONDS:.0f}s after the first refusal")
    if not ours:  # a new stall: its lastTransitionTime is the first refusal
        status["conditions"] = conditions.remove_condition(status.get("conditions"), conditions.STALLED)
    ctx.condition(conditions.STALLED, True, conditions.REASON_POD_CREATION_FAILED, message)
    status["message"] = message
    ctx.event(conditions.REASON_POD_CREATION_FAILED, message, warning=True)
    ctx.create.clear()
    ctx.hold_creations = delay
    ctx.requeue.append(delay)


def _plan_finished(ctx: _Planning) -> None:
    """A finished task only cleans up its recorded pods, and goes away after spec.ttlSecondsAfterFinished."""
    ttl = ctx.spec.ttl_seconds_after_finished
    if ttl is None or not ctx.status.get("completionTime"):
        return
    remaining = ttl - _seconds_between(ctx.status["completionTime"], ctx.now)
    if remaining <= 0:
        ctx.delete_task = True
    else:
        ctx.requeue.append(round(remaining, 3))


def _start_task(ctx: _Planning) -> None:
    ctx.status.update({"phase": PENDING, "round": 0, "stage": INITIALIZING,
                       "startTime": conditions.format_time(ctx.now)})
    if ctx.spec.data.source == "builtin":
        ctx.status["shardCount"] = _resolve_shard_count(ctx)
    ctx.condition(conditions.READY, False, conditions.REASON_INITIALIZING, "creating the initial global model")
    ctx.progressing(conditions.REASON_INITIALIZING, "creating the initial global model")
    ctx.event("Started", f"task started: up to {ctx.spec.rounds.max} rounds, {ctx.spec.devices.per_round} devices "
                         "per round")


def _resolve_shard_count(ctx: _Planning) -> int:
    """Simulated devices of builtin data: devices.count, else the matching nodes when the task starts (else
    perRound when the runtime passed no nodes)."""
    if ctx.spec.devices.count is not None:
        return ctx.spec.devices.count
    if ctx.nodes:
        selector = encode(ctx.spec.devices.selector)
        matching = sum(1 for node in ctx.nodes if matches_selector(node["metadata"].get("labels") or {}, selector))
        return max(matching, ctx.spec.devices.per_round)
    return ctx.spec.devices.per_round


def _is_failed_invalid_spec(status: TaskStatusDict) -> bool:
    failed: Mapping[str, Any] = conditions.get_condition(status.get("conditions"), conditions.FAILED) or {}
    return (status.get("phase") == FAILED and failed.get("reason") == conditions.REASON_INVALID_SPEC
            and not status.get("startTime"))


def _plan_invalid_spec(task: KubeObject, observed: Observed, error: SpecError) -> Plan:
    """A task whose spec a cluster would reject: Failed with every field path; its running pods are stopped."""
    status: TaskStatusDict = copy.deepcopy(task.get("status") or TaskStatusDict()) if isinstance(task, dict) else {}
    message = "; ".join(str(e) for e in error.errors)
    metadata = task.get("metadata") if isinstance(task, dict) else None
    generation = (metadata or {}).get("generation")
    previous: Mapping[str, Any] = conditions.get_condition(status.get("conditions"), conditions.FAILED) or {}
    events: list[Event] = []
    if previous.get("reason") != conditions.REASON_INVALID_SPEC or previous.get("message") != message:
        events.append(Event("Warning", conditions.REASON_INVALID_SPEC, message))
    status["phase"] = FAILED
    status["message"] = f"invalid spec: {message}"
    status.setdefault("completionTime", conditions.format_time(observed.now))
    if generation is not None:
        status["observedGeneration"] = int(generation)
    for type_, value in ((conditions.FAILED, True), (conditions.READY, False), (conditions.PROGRESSING, False)):
        status["conditions"] = conditions.set_condition(status.get("conditions"), type_, value,
                                                        conditions.REASON_INVALID_SPEC, message, observed.now,
                                                        generation)
    running = sorted(pod["metadata"]["name"] for pod in observed.pods
                     if observe_pod(pod).state in (STATE_PENDING, STATE_RUNNING))
    return Plan(delete=running, status=status, events=events)


def _deadline_passed(ctx: _Planning) -> bool:
    """spec.activeDeadlineSeconds, counted from the start or, as for Kubernetes Jobs, from the last resume; the
    clock stops while the task is suspended."""
    deadline = ctx.spec.active_deadline_seconds
    if not deadline or not ctx.status.get("startTime"):
        return False
    elapsed = _seconds_between(_later(ctx.status["startTime"], _resumed_at(ctx.status)), ctx.now)
    if elapsed < deadline:
        ctx.requeue.append(round(deadline - elapsed, 3))
        return False
    _fail(ctx, conditions.REASON_DEADLINE_EXCEEDED,
          f"the task ran {elapsed:.0f}s, beyond spec.activeDeadlineSeconds={deadline} (stopped in round {ctx.round}, "
          f"stage {ctx.status.get('stage')}); raise activeDeadlineSeconds or lower rounds.max to finish in time")
    return True


def _fail(ctx: _Planning, reason: str, message: str) -> None:
    ctx.create.clear()
    ctx.keep.clear()
    ctx.needs_devices = False
    ctx.device_request = None
    ctx.status.update({"phase": FAILED, "completionTime": conditions.format_time(ctx.now), "message": message})
    ctx.condition(conditions.FAILED, True, reason, message)
    ctx.condition(conditions.READY, False, reason, message)
    ctx.condition(conditions.PROGRESSING, False, reason, message)
    ctx.event("TaskFailed", f"{reason}: {message}", warning=True)


def _succeed(ctx: _Planning, reason: str, message: str) -> None:
    ctx.status.update({"phase": SUCCEEDED, "completionTime": conditions.format_time(ctx.now), "message": message})
    ctx.condition(conditions.SUCCEEDED, True, reason, message)
    ctx.condition(conditions.READY, True, conditions.REASON_COMPLETED, message)
    ctx.condition(conditions.PROGRESSING, False, reason, message)
    ctx.event("TaskSucceeded", message)


# --------------------------------------------------------------------------------------------------------------------
# Suspend and resume


def _suspend(ctx: _Planning) -> None:
    """No new pods; running ones are deleted; results that already arrived are kept."""
    _record_finished_pods(ctx)
    ctx.keep.clear()
    if ctx.status.get("phase") != SUSPENDED:
        ctx.status["phase"] = SUSPENDED
        message = f"suspended in round {ctx.round}, stage {ctx.status.get('stage')}; set spec.suspend: false to resume"
        ctx.condition(conditions.SUSPENDED, True, conditions.REASON_SUSPENDED, message)
        ctx.condition(conditions.PROGRESSING, False, conditions.REASON_SUSPENDED, message)
        ctx.status["message"] = message
        ctx.event("Suspended", message)
    for record in _pod_records(ctx.status):
        if record.get("state") == STATE_RUNNING:
            record["state"] = STATE_PENDING  # its pod is deleted; resume creates it again


def _record_finished_pods(ctx: _Planning) -> None:
    """Store the results of pods that succeeded, without launching anything."""
    for record in _pod_records(ctx.status):
        if record.get("state") in UNFINISHED_STATES:
            outcome = observe_pod(ctx.pods.get(record.get("pod", "")))
            if outcome.state == STATE_SUCCEEDED:
                _store_success(ctx, record, outcome.result)


def _resume(ctx: _Planning) -> None:
    message = f"resumed in round {ctx.round}, stage {ctx.status.get('stage')}"
    ctx.status["phase"] = RUNNING if ctx.status.get("stage") != INITIALIZING else PENDING
    ctx.condition(conditions.SUSPENDED, False, conditions.REASON_RESUMED, message)
    ctx.progressing(conditions.REASON_RESUMED, message)
    ctx.event("Resumed", message)


def _resumed_at(status: TaskStatusDict) -> str | None:
    suspended = conditions.get_condition(status.get("conditions"), conditions.SUSPENDED)
    if suspended and suspended.get("status") == conditions.FALSE:
        return suspended.get("lastTransitionTime")
    return None


# --------------------------------------------------------------------------------------------------------------------
# Stages. Each planner returns True when it finished its stage and moved the task to the next one.


def _stage_pod(ctx: _Planning, stage: str, build: Callable[[int], KubeObject]) -> StagePodStatusDict:
    """The record of the server-side pod for `stage` (init, aggregate, adjust), created on first use."""
    record = ctx.status.get("current")
    if not record or record.get("stage") != stage:
        record = {"stage": stage, "pod": build(0)["metadata"]["name"], "state": STATE_PENDING, "attempts": 0,
                  "startTime": ctx.stamp}
        ctx.status["current"] = record
    return record


def _advance_record(ctx: _Planning, record: PodRecord, build: Callable[[int], KubeObject], what: str,
                    deadline: float | None = None) -> _Progress:
    """Advance one pod record and store what happened in it (state, reason, result, times)."""
    if record.get("state") not in UNFINISHED_STATES:
        if record.get("state") != STATE_EXCLUDED:
            ctx.keep.add(record["pod"])  # a finished pod of the running stage stays until the stage ends
        return _Progress(record["state"], record.get("result"), record.get("reason", ""))
    attempts_before = int(record.get("attempts") or 0)
    progress = _advance_pod(ctx, record, build, what, deadline)
    if int(record.get("attempts") or 0) != attempts_before and "startTime" in record:
        record["startTime"] = ctx.stamp
    if progress.state == STATE_SUCCEEDED:
        _store_success(ctx, record, progress.result)
    elif progress.state == STATE_FAILED:
        record.update({"state": STATE_FAILED, "reason": progress.reason})
        _stamp_finish(ctx, record)
    else:
        record["state"] = progress.state
    return progress


def _stamp_finish(ctx: _Planning, record: PodRecord) -> None:
    if "startTime" in record:  # device and stage records carry their times; publish records do not
        record["finishTime"] = ctx.stamp


def _advance_stage_pod(ctx: _Planning, stage: str, build: Callable[[int], KubeObject]) -> _Progress:
    record = _stage_pod(ctx, stage, build)
    return _advance_record(ctx, record, build, f"round {ctx.round} {stage}" if ctx.round else stage,
                           deadline=float(ctx.spec.stage_timeout_seconds))


def _plan_initializing(ctx: _Planning) -> bool:
    progress = _advance_stage_pod(ctx, naming.STAGE_INIT,
                                  lambda attempt: pods.build_init_pod(ctx.build_task(), ctx.config, attempt=attempt))
    if progress.state == STATE_RUNNING and ctx.status.get("phase") == PENDING:
        ctx.status["phase"] = RUNNING
    if progress.state == STATE_FAILED:
        _fail(ctx, progress.failure_reason,
              f"the initial model could not be created: {progress.reason}; check spec.model "
              "(name, args, initialUri) and the store settings, then recreate the task")
        return False
    if progress.state != STATE_SUCCEEDED:
        return False
    ctx.status["phase"] = RUNNING
    ctx.condition(conditions.READY, True, conditions.REASON_ROUND_RUNNING, "the initial global model is ready")
    _start_round(ctx, 1)
    return True


def _start_round(ctx: _Planning, round_: int) -> None:
    ctx.status.update({"round": round_, "stage": SCHEDULING, "devices": [], "assignment": [],
                       "waitingSince": ctx.stamp})
    ctx.status.pop("current", None)
    ctx.status.pop("roundStartTime", None)
    ctx.status.pop("currentRound", None)
    ctx.progressing(conditions.REASON_SCHEDULING, f"round {round_}: selecting devices")


def _plan_scheduling(ctx: _Planning) -> bool:
    per_round, quorum = ctx.spec.devices.per_round, ctx.spec.devices.quorum
    if ctx.assignment is None:
        _ask_for_devices(ctx, per_round)
        return False
    slots = _new_slots(ctx, ctx.assignment, per_round)
    if ctx.assignment.waiting_reason or len(slots) < quorum:
        reason = conditions.REASON_WAITING_FOR_DEVICES
        message = ctx.assignment.waiting_reason
        if ctx.assignment.rejected:  # the scheduler cannot read the request: the message names the field to fix
            reason = conditions.REASON_INVALID_SPEC
        if not message:
            reason = conditions.REASON_INSUFFICIENT_DEVICES
            message = (f"only {len(slots)} devices qualify, {quorum} needed (spec.devices.minReturned/perRound); "
                       "add device nodes matching spec.devices.selector or lower spec.devices.perRound")
        if _mark_unschedulable(ctx, reason, f"round {ctx.round}: {message}"):
            _record_period(ctx)  # only when the reason is new: a task that waits on is not rewritten every retry
        ctx.requeue.append(UNSCHEDULABLE_RETRY_SECONDS)
        return False
    _record_period(ctx)
    ctx.condition(conditions.UNSCHEDULABLE, False, conditions.REASON_SCHEDULABLE,
                  f"round {ctx.round}: {len(slots)} devices selected")
    ctx.status.pop("waitingSince", None)
    ctx.status.update({"stage": TRAINING, "roundStartTime": ctx.stamp,
                       "devices": [_device_record(ctx, slot) for slot in slots]})
    _record_assignment(ctx, slots)
    ctx.status["currentRound"] = {"round": ctx.round, "startTime": ctx.stamp}
    if ctx.assignment.period is not None:
        ctx.status["currentRound"]["period"] = ctx.assignment.period
    names = _listed([slot.device for slot in slots], ", ")
    ctx.progressing(conditions.REASON_TRAINING, f"round {ctx.round}: training on {len(slots)} devices")
    ctx.event("RoundStarted", f"round {ctx.round} started with {len(slots)} devices: {names}")
    return True


def _record_period(ctx: _Planning) -> None:
    """The task took part in a numbered learning period: its number and time go into the status. A task left
    waiting (recorded when it starts to wait, or waits for a new reason) collects for the next period from this
    time on (scheduling.collection); retries that change nothing leave the status as it is."""
    if ctx.assignment is not None and ctx.assignment.period is not None:
        ctx.status.update({"period": ctx.assignment.period, "periodTime": ctx.stamp})


def _mark_unschedulable(ctx: _Planning, reason: str, message: str) -> bool:
    """The Unschedulable condition; True when it is new or says something new (then an event tells)."""
    previous: Mapping[str, Any] = conditions.get_condition(ctx.status.get("conditions"), conditions.UNSCHEDULABLE) or {}
    changed = previous.get("status") != conditions.TRUE or previous.get("message") != message
    if changed:
        ctx.event("DeviceUnschedulable", message, warning=True)
    ctx.condition(conditions.UNSCHEDULABLE, True, reason, message)
    ctx.status["message"] = message
    return changed


def _ask_for_devices(ctx: _Planning, count: int) -> None:
    ctx.needs_devices = True
    ctx.device_request = _device_request(ctx.task, ctx.status, count)


def _new_slots(ctx: _Planning, assignment: TaskAssignment, wanted: int) -> list[DeviceSlot]:
    """The assignment's devices that are not in this round yet, at most `wanted`, each device once."""
    seen = {record["device"] for record in ctx.status.get("devices") or []}
    slots: list[DeviceSlot] = []
    for slot in assignment.devices:
        if slot.device not in seen and len(slots) < wanted:
            seen.add(slot.device)
            slots.append(slot)
    return slots


def _record_assignment(ctx: _Planning, slots: list[DeviceSlot]) -> None:
    """status.assignment: the scheduler's choices for this round, with its time estimates (replacements appended)."""
    assignment = ctx.status.setdefault("assignment", [])
    for slot in slots:
        entry: AssignedDeviceDict = {"device": slot.device, "node": slot.node}
        if slot.estimated_seconds is not None:
            entry["estimatedSeconds"] = round(float(slot.estimated_seconds), 3)
        assignment.append(entry)


def _device_record(ctx: _Planning, slot: DeviceSlot) -> DeviceStatusDict:
    manifest = _build_train_pod(ctx, slot.device, slot.node, 0)
    return {"device": slot.device, "node": slot.node, "pod": manifest["metadata"]["name"], "state": STATE_PENDING,
            "attempts": 0, "startTime": ctx.stamp}


def _build_train_pod(ctx: _Planning, device: str, node: str, attempt: int) -> KubeObject:
    return pods.build_train_pod(ctx.build_task(), ctx.config, ctx.round, DeviceSlot(device=device, node=node),
                                attempt=attempt)


def _device_request(task: FederatedTask, status: TaskStatusDict, count: int) -> DeviceRequest:
    """What this task asks the scheduler for: `count` more devices for the current round; this round's devices count
    as having participated and are excluded (a finished or failed one is no replacement, even once its pod is gone);
    mid-round it is a replacement (no collection window)."""
    request = build_device_request(task, status=status, per_round=count)
    participation = dict(request.participation)
    for record in status.get("devices") or []:
        if record.get("state") in UNFINISHED_STATES:  # a finished device's turn is in the ledger already
            participation[record["device"]] = participation.get(record["device"], request.participation_default) + 1
    return dataclasses.replace(request, participation=participation, replacement=status.get("stage") == TRAINING,
                               exclude=frozenset(record["device"] for record in status.get("devices") or []))


def _store_success(ctx: _Planning, record: PodRecord, result: dict[str, Any] | None) -> None:
    record.update({"state": STATE_SUCCEEDED, "reason": "", "result": result or {}})
    _stamp_finish(ctx, record)
    if "device" not in record:
        return
    _record_turn(ctx, record["device"])
    seconds = _number((result or {}).get("seconds"))
    if seconds is not None and seconds >= 0:
        estimates = ctx.status.setdefault("trainSecondsEstimate", {})
        estimates[record["device"]] = round(update_train_estimate(estimates.get(record["device"]), seconds), 3)


def _record_turn(ctx: _Planning, device: str, ran_for: float | None = None, straggler: bool = False,
                 failed: bool = False) -> None:
    """The fairness ledger and the time model learn from every finished turn of a device, not only from returns:
    status.participation counts the rounds a device was given (returned, excluded or failed), so a device that
    failed or straggled does not look behind and is not picked again and again; a device that ran `ran_for` seconds
    without an update takes at least that long (a straggler's estimate: the EWMA with it, and no less than it). A
    device that failed returned nothing, however soon it failed: for the time model it missed the round's deadline
    (rounds.timeoutSeconds), so a device that fails fast does not look fast."""
    participation = ctx.status.setdefault("participation", {})
    participation[device] = int(participation.get(device, participation_default(ctx.status))) + 1
    if failed:
        ran_for, straggler = max(ran_for or 0.0, float(ctx.spec.rounds.timeout_seconds)), True
    if ran_for is None or ran_for <= 0:
        return
    estimates = ctx.status.setdefault("trainSecondsEstimate", {})
    previous = estimates.get(device)
    if straggler:
        estimates[device] = round(max(update_train_estimate(previous, ran_for), ran_for), 3)
    elif previous is None or previous < ran_for:
        estimates[device] = round(ran_for, 3)


def _advance_devices(ctx: _Planning, records: list[DeviceStatusDict] | None = None) -> None:
    for record in (ctx.status.get("devices") or []) if records is None else records:
        was_unfinished = record.get("state") in UNFINISHED_STATES
        def build(attempt: int, r: DeviceStatusDict = record) -> KubeObject:
            return _build_train_pod(ctx, r["device"], r["node"], attempt)

        progress = _advance_record(ctx, record, build, f"round {ctx.round} device {record['device']}")
        if was_unfinished and progress.state == STATE_FAILED:
            _record_turn(ctx, record["device"], _seconds_between(record.get("startTime"), ctx.now), failed=True)
            ctx.event("DeviceFailed", f"round {ctx.round}: device {record['device']} on node {record['node']} "
                                      f"gave up: {progress.reason}", warning=True)


def _round_timer_start(status: TaskStatusDict) -> str | None:
    """The round deadline counts from the round's start, or from the resume of a suspended round."""
    return _later(status.get("roundStartTime"), _resumed_at(status))


def _later(first: str | None, second: str | None) -> str | None:
    if first and second:
        return second if conditions.parse_time(second) > conditions.parse_time(first) else first
    return first or second


def _plan_training(ctx: _Planning) -> bool:
    spec = ctx.spec
    per_round, quorum, timeout = spec.devices.per_round, spec.devices.quorum, spec.rounds.timeout_seconds
    give_up = spec.rounds.quorum_timeout  # below quorum, the round waits for running devices until then
    _advance_devices(ctx)
    records = ctx.status["devices"]
    returned = [r for r in records if r["state"] == STATE_SUCCEEDED]
    active = [r for r in records if r["state"] in UNFINISHED_STATES]
    elapsed = _seconds_between(_round_timer_start(ctx.status), ctx.now)
    timed_out = elapsed >= timeout
    missing = per_round - len(returned) - len(active)
    replacements_refused = False
    if missing > 0 and not timed_out:
        if ctx.assignment is None:
            _ask_for_devices(ctx, missing)
        else:
            replacements_refused = not _add_replacements(ctx, missing)
    if active and timed_out and len(returned) >= quorum:
        _exclude_stragglers(ctx, active, timeout)
        active = []
    if active:
        if timed_out and elapsed >= give_up:  # below quorum: the running devices had until give_up to return
            _fail(ctx, conditions.REASON_QUORUM_NOT_REACHED,
                  f"round {ctx.round}: {len(returned)} of {quorum} needed updates after {elapsed:.0f}s, beyond "
                  f"{_quorum_timeout_field(spec)}, with {len(active)} devices still running; raise "
                  "rounds.quorumTimeoutSeconds or lower spec.devices.minReturned")
        elif timed_out:
            _mark_stalled(ctx, conditions.REASON_QUORUM_NOT_REACHED,
                          f"round {ctx.round}: past rounds.timeoutSeconds={timeout} with {len(returned)} of "
                          f"{quorum} needed updates; waiting for {len(active)} running devices until "
                          f"{give_up}s ({_quorum_timeout_field(spec)}), then the task fails")
            ctx.requeue.append(round(give_up - elapsed, 3))
        else:
            ctx.requeue.append(round(timeout - elapsed, 3))
        return False
    if missing > 0 and not timed_out and not replacements_refused:
        return False  # the runtime is asked for replacement devices
    if len(returned) < quorum:
        _fail(ctx, conditions.REASON_QUORUM_NOT_REACHED, _quorum_message(ctx, records, returned, quorum))
        return False
    _finish_training(ctx)
    return True


def _quorum_timeout_field(spec: TaskSpec) -> str:
    """rounds.quorumTimeoutSeconds as a message names it (its default: twice rounds.timeoutSeconds)."""
    if spec.rounds.quorum_timeout_seconds is None:
        return f"rounds.quorumTimeoutSeconds (default: twice rounds.timeoutSeconds={spec.rounds.timeout_seconds})"
    return f"rounds.quorumTimeoutSeconds={spec.rounds.quorum_timeout_seconds}"


def _add_replacements(ctx: _Planning, missing: int) -> bool:
    if ctx.assignment is None:
        raise AssertionError("_plan_training asks for replacements only when the runtime passed an assignment")
    _record_period(ctx)
    slots = _new_slots(ctx, ctx.assignment, missing)
    _record_assignment(ctx, slots)
    added = [_device_record(ctx, slot) for slot in slots]
    for record in added:
        ctx.status["devices"].append(record)
        ctx.event(conditions.REASON_DEVICE_REPLACED,
                  f"round {ctx.round}: device {record['device']} on node {record['node']} replaces a failed device")
    _advance_devices(ctx, added)
    return bool(added)


def _exclude_stragglers(ctx: _Planning, stragglers: list[DeviceStatusDict], timeout: int) -> None:
    for record in stragglers:
        record.update({"state": STATE_EXCLUDED,
                       "reason": f"straggler: no update within rounds.timeoutSeconds={timeout}"})
        _record_turn(ctx, record["device"], _seconds_between(record.get("startTime"), ctx.now), straggler=True)
        _stamp_finish(ctx, record)
        ctx.keep.discard(record["pod"])
        ctx.event(conditions.REASON_STRAGGLER_EXCLUDED,
                  f"round {ctx.round}: device {record['device']} on node {record['node']} "
                  f"excluded, no update within {timeout}s", warning=True)


def _mark_stalled(ctx: _Planning, reason: str, message: str) -> None:
    ctx.condition(conditions.STALLED, True, reason, message)
    ctx.status["message"] = message


def _quorum_message(ctx: _Planning, records: list[DeviceStatusDict], returned: list[DeviceStatusDict],
                    quorum: int) -> str:
    failures = _listed([f"{r['device']}: {r.get('reason') or r['state']}" for r in records
                        if r["state"] in (STATE_FAILED, STATE_EXCLUDED)], "; ")
    return (f"round {ctx.round}: only {len(returned)} of {len(records)} devices returned updates, "
            f"spec.devices.minReturned={quorum} needed, and no free device could replace the failed ones "
            f"({failures}); fix the failing devices, add device nodes matching spec.devices.selector, raise "
            "spec.podRetryLimit or lower spec.devices.minReturned")


def _finish_training(ctx: _Planning) -> None:
    records = ctx.status["devices"]
    current = ctx.status.setdefault("currentRound", {"round": ctx.round, "startTime": ctx.status["roundStartTime"]})
    current.update({
        "devices": [r["device"] for r in records],
        "returned": sorted(r["device"] for r in records if r["state"] == STATE_SUCCEEDED),
        "excluded": sorted(r["device"] for r in records if r["state"] in (STATE_FAILED, STATE_EXCLUDED)),
        "trainSeconds": _seconds_between(ctx.status["roundStartTime"], ctx.now),
        "samples": sum(sample_count(r.get("result")) for r in records if r["state"] == STATE_SUCCEEDED),
    })
    count_round(current)  # the lists are capped in the stored status (compaction.py); the counts are not
    conditions_list = ctx.status.get("conditions")
    if conditions.get_condition(conditions_list, conditions.STALLED):
        ctx.status["conditions"] = conditions.remove_condition(conditions_list, conditions.STALLED)
    ctx.keep.clear()
    ctx.status["stage"] = AGGREGATING
    ctx.progressing(conditions.REASON_AGGREGATING,
                    f"round {ctx.round}: aggregating {len(current['returned'])} updates")


def _plan_aggregating(ctx: _Planning) -> bool:
    base = naming.store_base(ctx.task, ctx.config)
    # this round's device records, not currentRound.returned: a large round's stored lists are capped
    returned = sorted(r["device"] for r in ctx.status.get("devices") or [] if r["state"] == STATE_SUCCEEDED)
    update_uris = sorted(naming.update_uri(base, ctx.round, device) for device in returned)
    caps = _shard_sample_caps(ctx, returned)
    progress = _advance_stage_pod(ctx, naming.STAGE_AGGREGATE, lambda attempt: pods.build_aggregate_pod(
        ctx.build_task(), ctx.config, ctx.round, update_uris, attempt=attempt, sample_caps=caps))
    if progress.state == STATE_FAILED:
        _fail(ctx, progress.failure_reason,
              f"round {ctx.round}: aggregation failed: {progress.reason}; check spec.aggregation and the updates in "
              "the store, then recreate the task")
        return False
    if progress.state != STATE_SUCCEEDED:
        return False
    result = progress.result or {}
    rejected = [item for item in result.get("rejected") or [] if isinstance(item, dict)]
    for item in rejected:
        ctx.event("UpdateRejected", f"round {ctx.round}: update {item.get('uri')} rejected: {item.get('reason')}",
                  warning=True)
    current = ctx.status["currentRound"]
    current.update({"rejected": sorted(_device_of(str(item.get("uri", ""))) for item in rejected),
                    "rejectedCount": len(rejected),
                    "aggregateSeconds": _seconds_between(ctx.status["current"]["startTime"], ctx.now)})
    if result.get("updates") == 0:
        _fail(ctx, conditions.REASON_ALL_UPDATES_REJECTED,
              f"round {ctx.round}: every update was rejected ({len(rejected)}); see the UpdateRejected events and "
              "check the devices' data and spec.training")
        return False
    ctx.keep.clear()
    ctx.status["stage"] = ADJUSTING
    ctx.progressing(conditions.REASON_ADJUSTING, f"round {ctx.round}: adjusting the aggregated model")
    return True


def _shard_sample_caps(ctx: _Planning, returned: list[str]) -> dict[str, int]:
    """Builtin data: every shard's update may claim at most the samples its train pod reported (the kubelet's
    termination message, not the store, so an update overwritten in the store cannot claim more)."""
    if ctx.spec.data.source != "builtin":
        return {}
    caps: dict[str, int] = {}
    for record in ctx.status.get("devices") or []:
        reported = (record.get("result") or {}).get("num_samples")
        if record["device"] in returned and type(reported) is int and reported >= 0:
            caps[record["device"]] = reported
    return caps


def _device_of(update_uri: str) -> str:
    """The device of an update URI (…/updates/<device>.safetensors); the URI itself when it has another form."""
    name = update_uri.rsplit("/", 1)[-1]
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else update_uri


def _teacher_uris(ctx: _Planning) -> list[str]:
    """adjustment.distillation (FedDF): the round's accepted updates, the ensemble the adjust stage distils. The
    returned devices less the ones the aggregation rejected (currentRound.rejected: a round with more rejections than
    that list keeps may leave a rejected update in the ensemble; the aggregate is unaffected)."""
    adjustment = ctx.spec.adjustment
    if not (adjustment.enabled and adjustment.distillation > 0):
        return []
    rejected = set(ctx.status["currentRound"].get("rejected") or [])
    base = naming.store_base(ctx.task, ctx.config)
    return sorted(naming.update_uri(base, ctx.round, r["device"]) for r in ctx.status.get("devices") or []
                  if r["state"] == STATE_SUCCEEDED and r["device"] not in rejected)


def _plan_adjusting(ctx: _Planning) -> bool:
    progress = _advance_stage_pod(ctx, naming.STAGE_ADJUST, lambda attempt: pods.build_adjust_pod(
        ctx.build_task(), ctx.config, ctx.round, attempt=attempt, teacher_uris=_teacher_uris(ctx)))
    if progress.state == STATE_FAILED:
        _fail(ctx, progress.failure_reason,
              f"round {ctx.round}: adjustment failed: {progress.reason}; check spec.adjustment and "
              "spec.data.shared, then recreate the task")
        return False
    if progress.state != STATE_SUCCEEDED:
        return False
    _record_round(ctx, progress.result or {})
    ctx.keep.clear()
    end = _end_reason(ctx)
    if end is None:
        _start_round(ctx, ctx.round + 1)
    else:
        _start_publishing(ctx, *end)
    return True


def _number(value: object) -> float | None:
    """A finite number from a worker's result, else None (a result never puts NaN into the status)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _record_round(ctx: _Planning, result: dict[str, Any]) -> None:
    base = naming.store_base(ctx.task, ctx.config)
    record: RoundRecordDict = ctx.status["currentRound"].copy()
    accuracy, loss = _number(result.get("accuracy")), _number(result.get("loss"))
    if accuracy is None:  # a record holds no None (an API server drops null fields)
        record.pop("accuracy", None)
    else:
        record["accuracy"] = accuracy
    if loss is None:
        record.pop("loss", None)
    else:
        record["loss"] = loss
    _record_validation(record, result)
    record.update({
        "adjustSeconds": _seconds_between(ctx.status["current"]["startTime"], ctx.now),
        "durationSeconds": _seconds_between(record.get("startTime"), ctx.now),
        "uri": naming.global_uri(base, ctx.round),
    })
    history = [entry for entry in ctx.status.get("history") or [] if entry.get("round") != ctx.round]
    ctx.status["history"] = (history + [record])[-HISTORY_LIMIT:]
    ctx.status.pop("currentRound", None)
    if record.get("accuracy") is not None:
        ctx.status["accuracy"] = record["accuracy"]
    _record_evaluation(ctx, record, result)
    shown = "n/a" if record.get("accuracy") is None else f"{record['accuracy']:.4f}"
    ctx.event("RoundCompleted", f"round {ctx.round} completed: accuracy {shown}, "
                                f"{round_count(record, 'returned')} of {round_count(record, 'devices')} devices "
                                f"returned, {record['durationSeconds']:.1f}s")


def _record_validation(record: RoundRecordDict, result: dict[str, Any]) -> None:
    """The validation split's score and loss (the adjust stage's validation_accuracy, validation_loss)."""
    accuracy, loss = _number(result.get("validation_accuracy")), _number(result.get("validation_loss"))
    if accuracy is None:
        record.pop("validationAccuracy", None)
    else:
        record["validationAccuracy"] = accuracy
    if loss is None:
        record.pop("validationLoss", None)
    else:
        record["validationLoss"] = loss


def _decision_score(entry: RoundRecordDict | ModelRefDict | TaskStatusDict) -> float | None:
    """What targetAccuracy, patience and best go by: the validation split's score; the reported accuracy only for a
    worker that reports no validation score."""
    validation = entry.get("validationAccuracy")
    return entry.get("accuracy") if validation is None else validation


EVALUATION_NOTES = {
    "test": "accuracy: the test split ({test} samples), reported only; validationAccuracy: the validation split "
            "({validation} samples, held out from the training data), which rounds.targetAccuracy, rounds.patience "
            "and best go by",
    "validation": "accuracy and validationAccuracy: the validation split ({validation} samples; the dataset has no "
                  "test split of its own), which rounds.targetAccuracy, rounds.patience and best go by",
}


def _record_evaluation(ctx: _Planning, record: RoundRecordDict, result: dict[str, Any]) -> None:
    """status.validationAccuracy, status.best (by validation score) and status.evaluation from the adjust result."""
    if "validationAccuracy" in record:
        ctx.status["validationAccuracy"] = record["validationAccuracy"]
    score = _decision_score(record)
    best: ModelRefDict = ctx.status.get("best") or {}
    best_score = _decision_score(best)
    if score is not None and (best_score is None or score > best_score):
        chosen: ModelRefDict = {"uri": record["uri"], "round": ctx.round}
        if "accuracy" in record:
            chosen["accuracy"] = record["accuracy"]
        if "validationAccuracy" in record:
            chosen["validationAccuracy"] = record["validationAccuracy"]
        ctx.status["best"] = chosen
    split, test, validation = result.get("test_split"), result.get("test_samples"), result.get("validation_samples")
    if split in EVALUATION_NOTES and type(test) is int and type(validation) is int and test >= 0 and validation >= 0:
        ctx.status["evaluation"] = EVALUATION_NOTES[split].format(test=test, validation=validation)


def _end_reason(ctx: _Planning) -> tuple[str, str] | None:
    rounds = ctx.spec.rounds
    score = _decision_score(ctx.status)
    best = ctx.status.get("best") or {}
    best_score = _decision_score(best)
    which = "validation accuracy" if "validationAccuracy" in ctx.status else "accuracy"
    if rounds.target_accuracy > 0 and score is not None and score >= rounds.target_accuracy:
        return (conditions.REASON_TARGET_ACCURACY_REACHED,
                f"{which} {score:.4f} reached rounds.targetAccuracy={rounds.target_accuracy} in round {ctx.round}")
    if rounds.patience > 0 and best.get("round") is not None and ctx.round - best["round"] >= rounds.patience:
        return (conditions.REASON_NO_IMPROVEMENT,
                f"no improvement over round {best['round']} ({which} {_shown(best_score)}) for "
                f"rounds.patience={rounds.patience} rounds")
    if ctx.round >= rounds.max:
        return conditions.REASON_MAX_ROUNDS_REACHED, f"all rounds.max={rounds.max} rounds done"
    return None


# --------------------------------------------------------------------------------------------------------------------
# Publishing


def _start_publishing(ctx: _Planning, reason: str, message: str) -> None:
    """Record the final and the best model; publish pods follow when publish.toDevices asks for them."""
    last = ctx.status["history"][-1]
    model: ModelRefDict = {}
    if "uri" in last:
        model["uri"] = last["uri"]
    if "round" in last:
        model["round"] = last["round"]
    if "accuracy" in last:
        model["accuracy"] = last["accuracy"]
    if "validationAccuracy" in last:
        model["validationAccuracy"] = last["validationAccuracy"]
    ctx.status["model"] = model
    ctx.status.setdefault("best", model.copy())
    ctx.status.update({"stage": PUBLISHING, "devices": []})
    ctx.status.pop("current", None)
    ctx.status.pop("roundStartTime", None)
    ctx.status["published"] = [{"node": node, "pod": naming.publish_pod_name(ctx.task.name, node),
                                "state": STATE_PENDING, "attempts": 0, "startTime": ctx.stamp}
                               for node in _publish_nodes(ctx)] if ctx.spec.publish.to_devices else []
    ctx.condition(conditions.PROGRESSING, True, reason, f"{message}; publishing the model")
    ctx.status["message"] = f"{message}; publishing the model"


def _publish_nodes(ctx: _Planning) -> list[str]:
    """Every device node: the nodes matching the device selector when the runtime passed nodes, else the nodes
    that trained in the last round."""
    if ctx.nodes is not None:
        selector = encode(ctx.spec.devices.selector)
        return sorted({node["metadata"]["name"] for node in ctx.nodes
                       if matches_selector(node["metadata"].get("labels") or {}, selector)})
    last_round = ctx.input_status.get("devices") or []
    return sorted({record["node"] for record in last_round if record.get("node")})


def _plan_publishing(ctx: _Planning) -> bool:
    model_uri = ctx.status["model"]["uri"]
    records = ctx.status.get("published") or []
    for record in records:
        was_unfinished = record["state"] in UNFINISHED_STATES
        def build(attempt: int, node: str = record["node"]) -> KubeObject:
            return pods.build_publish_pod(ctx.build_task(), ctx.config, node, model_uri, attempt=attempt)

        if was_unfinished:
            record.setdefault("startTime", ctx.stamp)  # a record written before publish pods had deadlines
        progress = _advance_record(ctx, record, build, f"publish to node {record['node']}",
                                   deadline=float(ctx.spec.stage_timeout_seconds))
        if was_unfinished and progress.state == STATE_FAILED:
            ctx.event("PublishFailed", f"publishing to node {record['node']} failed: {progress.reason}",
                      warning=True)
    if any(record["state"] in UNFINISHED_STATES for record in records):
        return False
    failed = [record for record in records if record["state"] == STATE_FAILED]
    if failed:
        overdue = any(_DEADLINE_PHRASE in (record.get("reason") or "") for record in failed)
        _fail(ctx, conditions.REASON_STAGE_DEADLINE_EXCEEDED if overdue else conditions.REASON_STAGE_FAILED,
              f"publishing the model to {len(failed)} of {len(records)} nodes failed "
              f"({'; '.join(r['node'] + ': ' + r['reason'] for r in failed)}); the model is at {model_uri}; "
              "check spec.publish.hostPath on those nodes"
              + (" and raise spec.stageTimeoutSeconds if copying takes longer" if overdue else ""))
        return False
    progressing: Mapping[str, Any] = (conditions.get_condition(ctx.status.get("conditions"), conditions.PROGRESSING)
                                      or {})
    model, best = ctx.status["model"], ctx.status["best"]
    where = f" and copied to {len(records)} device nodes" if records else ""
    ctx.event("ModelPublished", f"model of round {model['round']} (accuracy {_shown(model.get('accuracy'))}) at "
                                f"{model['uri']}{where}; best: round {best['round']} "
                                f"(accuracy {_shown(best.get('accuracy'))})")
    reason = progressing.get("reason") or conditions.REASON_COMPLETED
    message = (progressing.get("message") or "").replace("; publishing the model", "")
    _succeed(ctx, reason, f"{message}; model of round {model['round']} published")
    return False


def _listed(items: list[str], separator: str, limit: int = 10) -> str:
    """Items for a message, the first `limit` of them: status and events stay small with thousands of devices."""
    shown = separator.join(items[:limit])
    return shown if len(items) <= limit else f"{shown}{separator}... ({len(items) - limit} more)"


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


_STAGE_PLANNERS: dict[str, Callable[[_Planning], bool]] = {
    INITIALIZING: _plan_initializing,
    SCHEDULING: _plan_scheduling,
    TRAINING: _plan_training,
    AGGREGATING: _plan_aggregating,
    ADJUSTING: _plan_adjusting,
    PUBLISHING: _plan_publishing,
}
