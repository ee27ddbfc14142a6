"""Applying a Plan: the one order every runtime uses (the operator, `fedtask run`, the planner tests).

1. **status**: write `plan.status` when it differs from the stored one. If the write fails, `apply_plan` raises and
   nothing else happens: the next pass plans again from the stored status.
2. **creations**: create `plan.create`. A pod that already exists counts as done: names are deterministic, so a pod
   created by an earlier pass that crashed before its status write is found, not duplicated. A pod of the same name
   owned by another task uid (an older task of the same name) is not done: the sink deletes it, and a later pass
   creates the pod. A creation the API server refuses (403, 422, ...) does not stop the plan: the sink keeps the
   refusal, and the runtime gives it to the next plan (`Observed.creation_refusals`), which records it in the status
   (the Stalled condition, a Warning event), asks for a backoff (`plan.hold_creations_seconds`, during which the
   runtime creates none of the task's pods) and fails the task once refusals last too long.
3. **deletions**: delete `plan.delete`. A pod that is already gone counts as done. The planner deletes a finished pod
   only once the status it was given holds the pod's result, and that status was written in step 1 of an earlier
   pass, so no result is lost.
4. **events**: post `plan.events`. They describe what steps 1-3 did, so they come after them (a crash may lose an
   event, never a round).
5. **task deletion**: when `plan.delete_task` (spec.ttlSecondsAfterFinished has passed), delete the task itself.

A crash between any two steps is safe: the planner's input is the stored status and the pods that exist.
The sink does the I/O. Its methods are coroutines so the operator can overlap API calls; a runtime whose I/O is
synchronous implements them without awaiting anything and drives `apply_plan` with `run_sync`.
"""
from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fedtask_operator.core.kube_types import KubeObject
from fedtask_operator.core.planner import Event, Plan
from fedtask_operator.core.status_types import TaskStatusDict

T = TypeVar("T")


class PlanSink(Protocol):
    """Where a plan goes. Each method is idempotent: repeating it after a crash does no harm."""

    async def write_status(self, status: TaskStatusDict) -> bool:
        """Store the task's new status; False when it equals the stored one (nothing written)."""
        ...

    async def create_pods(self, manifests: list[KubeObject]) -> int:
        """Create the pods; returns how many were new (an existing pod of the same name counts as done, unless it
        belongs to another task uid). A refused creation is kept by the sink for the runtime, not raised."""
        ...

    async def delete_pods(self, names: list[str]) -> int:
        """Delete the pods; returns how many were there to delete."""
        ...

    async def post_events(self, events: list[Event]) -> None: ...

    async def delete_task(self) -> None: ...


@dataclass(frozen=True)
class Applied:
    """What applying one plan changed."""

    status_written: bool = False
    created: int = 0
    deleted: int = 0
    task_deleted: bool = False

    @property
    def acted(self) -> bool:
        return self.status_written or bool(self.created or self.deleted) or self.task_deleted


async def apply_plan(plan: Plan, sink: PlanSink) -> Applied:
    """Apply `plan` through `sink` in the documented order (see the module docstring)."""
    status_written = await sink.write_status(plan.status) if plan.status else False
    created = await sink.create_pods(plan.create) if plan.create else 0
    deleted = await sink.delete_pods(plan.delete) if plan.delete else 0
    if plan.events:
        await sink.post_events(plan.events)
    if plan.delete_task:
        await sink.delete_task()
    return Applied(status_written=status_written, created=created, deleted=deleted, task_deleted=plan.delete_task)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a synchronous sink's `apply_plan`) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        value: T = finished.value  # StopIteration.value is Any: the coroutine's own return type is T
        return value
    coroutine.close()
    raise RuntimeError("run_sync: the coroutine suspended; a synchronous sink must not await anything that waits")
