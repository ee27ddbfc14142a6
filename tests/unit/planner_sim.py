"""A tiny pure simulator around the round planner: an API server (task status, pods, events), a kubelet whose
pods finish when the test says so, and a scheduler that hands out free shards or nodes.

It applies plans the way the runtimes must (docs/internals.md): status first, then pods, then events; with
needs_devices it schedules and plans again with the assignment.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

from fedtask_operator.planner import Observed, Plan, plan_task
from fedtask_operator.pods import RuntimeConfig
from fedtask_operator.scheduling.types import DeviceSlot, TaskAssignment
from fedtask_operator.spec import FieldError, TaskStatus, decode_dataclass

T0 = datetime(2026, 11, 28, 5, 0, 0, tzinfo=timezone.utc)
CONFIG = RuntimeConfig(store_base_uri="s3://fedtask/tasks")
STAGE_LABEL = "fedtask.io/stage"
ROUND_LABEL = "fedtask.io/round"


def make_task(name: str = "mnist", **spec) -> dict:
    body = {
        "model": {"name": "mlp"},
        "data": {"dataset": "digits"},
        "devices": {"count": 6, "perRound": 3},
        "rounds": {"max": 3, "timeoutSeconds": 60},
        "backoffLimit": 1,
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": name, "namespace": "default", "uid": "uid-1", "generation": 1}, "spec": body}


def schema_problems(status: dict) -> list[str]:
    """Fields the typed status model (the CRD's source) does not know or whose type it rejects."""
    errors: list[FieldError] = []
    decode_dataclass(TaskStatus, status, "status", errors, strict=True)
    return [str(e) for e in errors]


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


class Cluster:
    """One task, its pods and events; time moves only when the test says so."""

    def __init__(self, task: dict, devices: list[str] | None = None, nodes: list[dict] | None = None):
        self.task = copy.deepcopy(task)
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

    # ---- the planner, applied like a runtime
    def plan(self, assignment: TaskAssignment | None = None) -> Plan:
        observed = Observed(pods=copy.deepcopy(list(self.pods.values())), now=self.now, nodes=self.nodes)
        return plan_task(copy.deepcopy(self.task), observed, CONFIG, assignment)

    def reconcile(self) -> Plan:
        plan = self.plan()
        if plan.needs_devices:
            assert plan.device_request is not None
            plan = self.plan(self.schedule(plan.device_request))
        problems = schema_problems(plan.status)
        assert not problems, problems
        # a second identical call gives the same plan (pure and deterministic)
        self.task["status"] = plan.status
        for manifest in plan.create:
            name = manifest["metadata"]["name"]
            if name not in self.pods:
                pod = copy.deepcopy(manifest)
                pod["status"] = {"phase": "Pending"}
                self.pods[name] = pod
                self.created.append(name)
        for name in plan.delete:
            assert name in self.pods, f"delete of unknown pod {name}"
            del self.pods[name]
            self.deleted.append(name)
        self.events.extend(plan.events)
        self.plans.append(plan)
        return plan

    def schedule(self, request) -> TaskAssignment:
        self.schedule_calls += 1
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
