"""The planner tests' pure simulator: an API server (task status, pods, events), a kubelet whose pods finish or fail
when the test says so, and a scheduler that hands out free devices; time moves only when the test says so.

`Cluster.apply` applies plans with the runtimes' own `apply_plan` (core/apply.py) and can crash the simulated
runtime after any step; with needs_devices it schedules and plans again with the assignment. Used by
tests/unit/test_planner.py, test_planner_faults.py, test_status_compaction.py and the real-cluster sweep
(tests/support/planner_sweep.py).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fedtask_operator.core.apply import apply_plan, run_sync
from fedtask_operator.core.crd import unknown_status_fields
from fedtask_operator.core.naming import DEVICE_LABEL, HOSTNAME_LABEL, ROUND_LABEL, STAGE_LABEL
from fedtask_operator.core.planner import Observed, Plan, plan_task, pods_awaiting_results
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling.types import DeviceSlot, TaskAssignment
from fedtask_operator.core.schema import FieldError
from fedtask_operator.core.spec import DECODER, TaskStatus

T0 = datetime(2026, 11, 28, 5, 0, 0, tzinfo=UTC)
CONFIG = RuntimeConfig(store_base_uri="s3://fedtask/tasks")


def make_task(name: str = "mnist", **spec) -> dict:
    body = {
        "model": {"name": "mlp"},
        "data": {"dataset": "digits"},
        "devices": {"count": 6, "perRound": 3},
        "rounds": {"max": 3, "timeoutSeconds": 60},
        "podRetryLimit": 1,
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": name, "namespace": "default", "uid": "uid-1", "generation": 1}, "spec": body}


def schema_problems(status: dict) -> list[str]:
    """Fields a real API server would prune from the status (the CRD's schema), and values the typed status model
    rejects."""
    errors: list[FieldError] = []
    DECODER.decode(TaskStatus, status, "status", errors, strict=True)
    return [f"pruned by the API server: {path}" for path in unknown_status_fields(status)] + [str(e) for e in errors]


def accuracy_of_round(round_: int) -> float:
    return round(0.5 + 0.1 * round_, 4)


def result_for(pod: dict) -> dict:
    """Plausible worker results per stage, derived from the pod (so tests can check they are recorded)."""
    stage = pod["metadata"]["labels"][STAGE_LABEL]
    round_ = int(pod["metadata"]["labels"].get(ROUND_LABEL, 0))
    args = pod["spec"]["containers"][0].get("args") or []
    if stage == "train":
        return {"num_samples": 100, "loss": 0.5, "seconds": 2.0, "bytes": 1000}
    if stage == "aggregate":
        updates = [a for a in args if str(a).endswith(".safetensors") and "/updates/" in str(a)]
        return {"updates": len(updates), "rejected": [], "seconds": 0.5, "bytes": 1000}
    if stage == "adjust":
        return {"accuracy": accuracy_of_round(round_), "loss": 1.0 / round_, "seconds": 1.0}
    return {"uri": "s3://x", "bytes": 1000, "seconds": 0.1}


class _Crash(Exception):
    """The simulated runtime dies here."""


class _SimulatedSink:
    """apply_plan's sink for the simulated cluster; it can die right after a named step."""

    def __init__(self, cluster: Cluster, crash_after: str | None):
        self.cluster, self.crash_after = cluster, crash_after

    def _step_done(self, step: str) -> None:
        if step == self.crash_after:
            raise _Crash

    async def write_status(self, status: dict) -> bool:
        changed = self.cluster.task.get("status") != status
        self.cluster.task["status"] = copy.deepcopy(status)
        self._step_done("write_status")
        return changed

    async def create_pods(self, manifests: list[dict]) -> int:
        created = 0
        for manifest in manifests:
            name = manifest["metadata"]["name"]
            if name not in self.cluster.pods:
                pod = copy.deepcopy(manifest)
                pod["status"] = {"phase": "Pending"}
                self.cluster.pods[name] = pod
                self.cluster.created.append(name)
                created += 1
        self._step_done("create_pods")
        return created

    async def delete_pods(self, names: list[str]) -> int:
        for name in names:
            assert name in self.cluster.pods, f"delete of unknown pod {name}"
            del self.cluster.pods[name]
            self.cluster.deleted.append(name)
        self._step_done("delete_pods")
        return len(names)

    async def post_events(self, events: list) -> None:
        self.cluster.events.extend(events)

    async def delete_task(self) -> None:
        self.cluster.task_deleted = True


class Cluster:
    """One task, its pods and events; time moves only when the test says so."""

    def __init__(self, task: dict, devices: list[str] | None = None, nodes: list[dict] | None = None,
                 config: RuntimeConfig = CONFIG):
        self.task = copy.deepcopy(task)
        self.config = config
        self.pods: dict[str, dict] = {}
        self.events = []
        self.now = T0
        self.nodes = nodes
        count = task["spec"]["devices"].get("count") or 6
        self.devices = devices if devices is not None else [f"d{i:03d}" for i in range(count)]
        self.free_devices: list[str] | None = None  # None: every device not training is free
        self.waiting_reason: str | None = None
        self.plans: list[Plan] = []
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.schedule_calls = 0
        self.requests = []
        self.task_deleted = False

    # ---- the planner, applied like a runtime
    def plan(self, assignment: TaskAssignment | None = None) -> Plan:
        observed = Observed(pods=copy.deepcopy(list(self.pods.values())), now=self.now, nodes=self.nodes)
        return plan_task(copy.deepcopy(self.task), observed, self.config, assignment)

    def reconcile(self) -> Plan:
        plan = self.next_plan()
        self.apply(plan)
        return plan

    def next_plan(self) -> Plan:
        """The plan a runtime applies now (scheduling first when the planner asks for devices)."""
        before = copy.deepcopy(self.task)
        plan = self.plan()
        assert self.plan() == plan, "the same input must give the same plan"
        if plan.needs_devices:
            assert plan.device_request is not None
            assignment = self.schedule(plan.device_request)
            plan = self.plan(assignment)
            assert self.plan(assignment) == plan
        assert self.task == before, "the planner must not change its input"
        problems = schema_problems(plan.status)
        assert not problems, problems
        json.dumps(plan.status, allow_nan=False)  # what an API server accepts
        names = [manifest["metadata"]["name"] for manifest in plan.create]
        assert len(names) == len(set(names)), f"a pod is created twice in one plan: {names}"
        assert not set(names) & set(plan.delete)
        awaiting = pods_awaiting_results(self.status, self.task["metadata"]["name"])
        for name in plan.delete:
            if self.pods[name]["status"]["phase"] in ("Succeeded", "Failed"):
                assert name not in awaiting, f"{name} deleted before its result was in status"
        return plan

    def apply(self, plan: Plan, crash_after: str | None = None) -> None:
        """Apply a plan like a runtime, through `apply_plan`; `crash_after` names the step after which the runtime
        dies ("start": before the first)."""
        sink = _SimulatedSink(self, crash_after)
        try:
            if crash_after == "start":
                raise _Crash
            run_sync(apply_plan(plan, sink))
        except _Crash:
            return
        self.plans.append(plan)

    def schedule(self, request) -> TaskAssignment:
        self.schedule_calls += 1
        self.requests.append(request)
        if self.waiting_reason:
            return TaskAssignment(waiting_reason=self.waiting_reason)
        busy = {p["metadata"]["labels"].get("fedtask.io/device") for p in self.pods.values()
                if p["status"]["phase"] in ("Pending", "Running")}
        in_round = {d["device"] for d in self.task.get("status", {}).get("devices") or []}
        pool = self.free_devices if self.free_devices is not None else self.devices
        candidates = [d for d in pool if d not in busy and d not in in_round]
        candidates.sort(key=lambda d: (request.participation.get(d, 0), d))
        chosen = candidates[: request.per_round]
        return TaskAssignment(devices=[DeviceSlot(device=d, node=self.node_of(d)) for d in chosen])

    @staticmethod
    def node_of(device: str) -> str:
        return device if not device.startswith("d") else f"node-{int(device[1:]) % 2}"

    # ---- the kubelet
    def active(self, stage: str | None = None) -> list[str]:
        return sorted(name for name, pod in self.pods.items() if pod["status"]["phase"] in ("Pending", "Running")
                      and (stage is None or pod["metadata"]["labels"][STAGE_LABEL] == stage))

    def start(self, name: str) -> None:
        self.pods[name]["status"] = {"phase": "Running"}

    def succeed(self, name: str, result: dict | None = None) -> None:
        pod = self.pods[name]
        message = json.dumps(result if result is not None else result_for(pod))
        pod["status"] = {"phase": "Succeeded", "containerStatuses": [
            {"name": "worker", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}}]}

    def fail(self, name: str, exit_code: int = 1, message: str = "RuntimeError: boom") -> None:
        self.pods[name]["status"] = {"phase": "Failed", "containerStatuses": [
            {"name": "worker", "state": {"terminated": {"exitCode": exit_code, "reason": "Error",
                                                        "message": json.dumps({"error": message})}}}]}

    def finish_all(self, stage: str | None = None) -> list[str]:
        names = self.active(stage)
        for name in names:
            self.succeed(name)
        return names

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    # ---- views
    @property
    def status(self) -> dict:
        return self.task.get("status") or {}

    def event_reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def advance_until(self, done: Callable[[], object], limit: int) -> None:
        """Reconcile, then let every active pod succeed, until `done()` holds right after a reconcile; AssertionError
        naming the phase and stage when it does not within `limit` passes."""
        for _ in range(limit):
            self.reconcile()
            if done():
                return
            self.finish_all()
        raise AssertionError(f"not reached in {limit} passes: {self.status.get('phase')} {self.status.get('stage')}")

    def run_to_end(self, limit: int = 200) -> None:
        """Every pod succeeds one second after it appears."""
        for _ in range(limit):
            self.reconcile()
            if self.status.get("phase") in ("Succeeded", "Failed"):
                self.reconcile()  # the clean-up pass
                return
            self.tick(1)
            self.finish_all()
        raise AssertionError(f"task did not finish: {self.status.get('phase')} {self.status.get('stage')}")


def train_pods(round_: int, *devices: str, task: str = "mnist") -> list[str]:
    return [f"{task}-r{round_:04d}-train-{device}" for device in devices]


def node(name: str, device: bool = True) -> dict:
    """A candidate node object as the planner reads it (Observed.nodes)."""
    labels = {HOSTNAME_LABEL: name}
    if device:
        labels[DEVICE_LABEL] = "true"
    return {"metadata": {"name": name, "labels": labels}}
