"""The local runtime's control loop: the operator's planner and scheduler, with pods as local processes.

observe (pod records, kubelet status changes) -> plan every task -> for the tasks that need devices, once their
learning period is due (its collection window, scheduling/collection.py), select devices jointly over the one fleet
and plan them again with their assignment -> apply (status, pods, events) -> wait for a pod to change or a requeue to
come due. A run is a fixpoint search: it ends when every task has finished, or when nothing
runs and no plan changes anything any more (a task stuck, e.g. unschedulable on this fleet).
"""
from __future__ import annotations

import dataclasses
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from fedtask_operator.core import conditions
from fedtask_operator.core.apply import apply_plan, run_sync
from fedtask_operator.core.phases import FINISHED_PHASES, POD_FINISHED_PHASES, SUCCEEDED, SUSPENDED
from fedtask_operator.core.planner import Event, Observed, Plan, plan_task
from fedtask_operator.core.scheduling.collection import SchedulingConfig, decide_period, next_period_number
from fedtask_operator.local.files import now_utc
from fedtask_operator.local.kubelet import ProcessKubelet
from fedtask_operator.local.progress import Progress, plot_accuracy
from fedtask_operator.local.store import LocalStore

POLL_SECONDS = 0.02  # the longest wait for a pod; worker pods wake the loop as soon as they end
IDLE_SECONDS = 0.05
# With nothing running and no plan changing anything, wait this long for a requeue before calling the run stuck.
STUCK_AFTER_SECONDS = 2.0
MAX_RECONCILE_STREAK = 50
# The conditions that say why a task does not progress (`stuck_reasons`).
STUCK_CONDITIONS = (conditions.UNSCHEDULABLE, conditions.STALLED, conditions.SUSPENDED)


@dataclass
class TaskRun:
    name: str
    key: str  # namespace/name, the scheduler's task key
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    requeue_at: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class LocalRuntime:
    def __init__(self, store: LocalStore, kubelet: ProcessKubelet, nodes: list[dict], config, tasks: list[str],
                 progress: Progress | None = None, scheduling: SchedulingConfig | None = None):
        self.store = store
        self.scheduling = scheduling or SchedulingConfig()
        self.kubelet = kubelet
        self.nodes = nodes
        self.config = config
        self.runs = {name: TaskRun(name, self._key(name)) for name in tasks}
        self.progress = progress or Progress()
        self.pod_task: dict[str, str] = {}  # namespace/pod -> task name

    def _key(self, name: str) -> str:
        metadata = self.store.task(name)["metadata"]
        return f"{metadata.get('namespace') or 'default'}/{name}"

    # ------------------------------------------------------------------------------------------------------ the loop
    def resume_pods(self) -> None:
        """Adopt the pods an earlier run left running (or run them again), and learn how the finished ones ended."""
        for name in self.runs:
            for pod in self.store.task_pods(name):
                self.pod_task[pod_key(pod)] = name
                if (pod.get("status") or {}).get("phase") in POD_FINISHED_PHASES:
                    continue
                status = self.kubelet.run_pod(pod)
                self.store.set_pod_status(name, pod["metadata"]["name"], status)

    def run(self) -> bool:
        """Run until every task has finished or the run is stuck. Returns True when every task succeeded."""
        self.resume_pods()
        idle_since: float | None = None
        idle_requeues = 0  # requeues that came due while nothing ran, and changed nothing
        changed = True
        streak = 0  # reconciles in a row that acted
        while True:
            for pod, status in self.kubelet.poll():
                task = self.pod_task.get(pod_key(pod))
                if task is not None and self.store.set_pod_status(task, pod["metadata"]["name"], status):
                    changed = True
            now = time.monotonic()
            requeued = any(run.requeue_at is not None and run.requeue_at <= now for run in self.runs.values())
            changed |= requeued
            if changed:
                acted = self.reconcile()
                if requeued and not acted and idle_since is not None:
                    idle_requeues += 1
                changed = False
                self.progress.update(self.tasks())
                if acted:
                    idle_since, idle_requeues = None, 0
                    changed = True  # a reconcile that acted is followed by another, until a fixpoint
                    streak += 1
                    if streak >= MAX_RECONCILE_STREAK:  # a planner that never settles must not spin a core
                        time.sleep(IDLE_SECONDS)
                        streak = 0
                    continue
                streak = 0
            if all(self._finished(name) for name in self.runs) and not self.kubelet.running():
                return all(self._phase(name) == SUCCEEDED for name in self.runs)
            if self.kubelet.running():
                idle_since, idle_requeues = None, 0
                self.progress.update(self.tasks())
                self.kubelet.wait_for_change(POLL_SECONDS)
                continue
            # Nothing runs and the fleet is fixed: once a requeue has changed nothing (or none is pending), no
            # later one will either. The task's conditions say why (e.g. Unschedulable: short of nvidia.com/gpu).
            idle_since = idle_since or now
            if now - idle_since > STUCK_AFTER_SECONDS and (idle_requeues or not self._requeue_pending()):
                return False
            time.sleep(IDLE_SECONDS)

    def reconcile(self) -> bool:
        """Plan every unfinished task (jointly for devices) and apply the plans; returns whether anything changed."""
        now = now_utc()
        observed = {}
        plans: dict[str, Plan] = {}
        for name in self.runs:
            if self._finished(name):
                continue
            observed[name] = Observed(pods=self.store.task_pods(name), now=now, nodes=self.nodes)
            plans[name] = plan_task(self.store.task(name), observed[name], self.config, None)
        needing = [name for name, plan in plans.items() if plan.needs_devices and plan.device_request is not None]
        if needing:
            requests = [plans[name].device_request for name in needing]
            live_pods = [pod for pod in self.store.all_pods()
                         if (pod.get("status") or {}).get("phase") not in POD_FINISHED_PHASES]
            active = [run.key for name, run in self.runs.items()
                      if not self._finished(name) and self._phase(name) != SUSPENDED]
            period = next_period_number(self.store.task(name).get("status") for name in self.runs)
            decision = decide_period(requests, self.nodes, live_pods, now.timestamp(), active=active,
                                     config=self.scheduling, period=period)
            for name in needing:
                if decision.due:
                    task_assignment = decision.assignment.tasks.get(plans[name].device_request.task)
                    plans[name] = plan_task(self.store.task(name), observed[name], self.config, task_assignment)
                else:  # the period still collects: look again when it is due
                    retry = min(decision.retry_after, plans[name].requeue_after or decision.retry_after)
                    plans[name] = dataclasses.replace(plans[name], requeue_after=retry)
        acted = False
        for name, plan in plans.items():
            acted |= self.apply(name, plan)
        return acted

    def apply(self, name: str, plan: Plan) -> bool:
        applied = run_sync(apply_plan(plan, _LocalSink(self, name)))
        run = self.runs[name]
        run.requeue_at = time.monotonic() + plan.requeue_after if plan.requeue_after is not None else None
        if self._finished(name) and run.finished is None:
            run.finished = time.monotonic()
            self.finish_task(name)
        return applied.acted

    def finish_task(self, name: str) -> None:
        """Copy the final model next to the task record and draw its accuracy plot."""
        status = self.store.task(name).get("status") or {}
        task_dir = self.store.task_dir(name)
        model_uri = (status.get("model") or {}).get("uri") or ""
        source = local_path(model_uri)
        if source is not None and source.exists():
            shutil.copyfile(source, task_dir / "model.safetensors")
        plot_accuracy(name, status.get("history") or [], task_dir / "accuracy.png")

    def stop(self) -> None:
        """Ctrl-C: kill the running pods; their records stay, so the next run starts them again."""
        self.kubelet.stop_all()

    # ------------------------------------------------------------------------------------------------------ helpers
    def tasks(self) -> dict[str, dict]:
        return {name: self.store.task(name) for name in self.runs}

    def _phase(self, name: str) -> str | None:
        return (self.store.task(name).get("status") or {}).get("phase")

    def _finished(self, name: str) -> bool:
        return self._phase(name) in FINISHED_PHASES

    def _requeue_pending(self) -> bool:
        return any(run.requeue_at is not None and not self._finished(run.name) for run in self.runs.values())

    def stuck_reasons(self) -> dict[str, str]:
        """For each unfinished task, the conditions that say why it does not progress."""
        reasons = {}
        for name in self.runs:
            if self._finished(name):
                continue
            status = self.store.task(name).get("status") or {}
            messages = [f"{c.get('type')}: {c.get('message') or c.get('reason')}"
                        for c in status.get("conditions") or []
                        if c.get("status") == conditions.TRUE and c.get("type") in STUCK_CONDITIONS]
            reasons[name] = "; ".join(messages) or status.get("message") or "no progress"
        return reasons


def pod_key(pod: dict) -> str:
    metadata = pod["metadata"]
    return f"{metadata.get('namespace') or 'default'}/{metadata['name']}"


class _LocalSink:
    """`apply_plan`'s sink for one task of the local runtime: the task folder and the process kubelet."""

    def __init__(self, runtime: LocalRuntime, name: str):
        self.runtime, self.name = runtime, name
        self.store = runtime.store

    async def write_status(self, status: dict) -> bool:
        return self.store.write_status(self.name, status)

    async def create_pods(self, manifests: list[dict]) -> int:
        created = 0
        for manifest in manifests:
            pod, new = self.store.create_pod(self.name, manifest)
            if new:
                created += 1
                self.runtime.pod_task[pod_key(pod)] = self.name
                status = self.runtime.kubelet.run_pod(pod)
                self.store.set_pod_status(self.name, pod["metadata"]["name"], status)
        return created

    async def delete_pods(self, names: list[str]) -> int:
        namespace = self.store.task(self.name)["metadata"].get("namespace") or "default"
        deleted = 0
        for pod_name in names:
            self.runtime.kubelet.delete_pod(pod_name, namespace)
            deleted += self.store.delete_pod(self.name, pod_name)
        return deleted

    async def post_events(self, events: list[Event]) -> None:
        for event in events:
            self.store.append_event(self.name, {"time": now_utc().isoformat(), "type": event.type,
                                                "reason": event.reason, "message": event.message})
            if event.type == "Warning":
                self.runtime.progress.message(f"{self.name}: {event.reason}: {event.message}")

    async def delete_task(self) -> None:
        """Not reached: the local runtime stops planning a task once it has finished, and keeps its folder (the
        run's output) whatever spec.ttlSecondsAfterFinished says."""


def local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):  # percent-encoded (config.workdir_store_uri): `#` or `?` in a folder name
        return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    if uri.startswith("/"):
        return Path(uri)
    return None

