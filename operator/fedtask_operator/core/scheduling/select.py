"""Joint device selection for one learning period across competing tasks (pure).

Per period: the fleet is read once (free resources, taints, who trains where); each task's candidates are computed
with vectorised masks; then
1. node-device tasks (hostPath/pvc data: a device is a node, one task per node) are assigned jointly as a bipartite
   matching: the highest-priority tasks are served first (aging raises the priority of waiting tasks), then the
   period's time cost is minimised by a threshold search (each task may use devices no slower than
   max(its own best possible round time, T); the smallest feasible T is found with exact augmenting-path matching);
   finally each task swaps in free devices it prefers (least participation, then most samples for
   `time-fair`, random among equals) at no time cost; `time-fair` forces devices that fell behind the mean and rests
   devices far ahead of it (see `policies.ahead_limit`) while enough others qualify (`node_devices`, with the
   candidates in `node_candidates` and the exact matching in `node_matching`);
2. simulated-device tasks (builtin data, shards) are packed onto nodes by free resources in priority order, each shard
   on the node where it finishes first, every placement subtracting its requests (`shards`).
Why a node was left out is written on first access (`explain`).
"""
from __future__ import annotations

import math

from .explain import LazyReasons, NodeExplainer
from .fleet import Fleet, build_fleet
from .node_devices import assign_node_tasks
from .period import Period
from .policies import POLICIES
from .shards import place_shards
from .types import Assignment, DeviceRequest, TaskAssignment

__all__ = ["AGING_SECONDS", "POLICIES", "effective_priority", "select_devices"]

AGING_SECONDS = 60.0  # a waiting task gains one priority level per minute


def effective_priority(request: DeviceRequest, now: float | None) -> float:
    """The task's priority plus one level per AGING_SECONDS it has waited (so nobody starves)."""
    if now is None or request.waiting_since is None:
        return float(request.priority)
    return request.priority + max(0.0, now - request.waiting_since) // AGING_SECONDS


def select_devices(requests: list[DeviceRequest], nodes, pods=(), now: float | None = None) -> Assignment:
    """Assign devices to every task of this learning period; see the module docstring for the algorithm."""
    fleet = nodes if isinstance(nodes, Fleet) else build_fleet(nodes, pods)
    seen = set()
    for request in requests:
        if request.task in seen:
            raise ValueError(f"task {request.task}: requested twice in one period")
        seen.add(request.task)
    order = sorted(requests, key=lambda r: (-effective_priority(r, now),
                                            r.waiting_since if r.waiting_since is not None else math.inf, r.task))
    period = Period(fleet)
    tasks = [period.resolve(request) for request in order]
    outcomes = assign_node_tasks(period, [task for task in tasks if task.request.node_devices])
    for task in tasks:
        if not task.request.node_devices:
            outcomes[task.key] = place_shards(period, task)
    assignment = Assignment()
    used_nodes = set()
    for key, outcome in sorted(outcomes.items()):
        assignment.tasks[key] = TaskAssignment(devices=outcome.slots, waiting_reason=outcome.waiting_reason)
        used_nodes.update(slot.node for slot in outcome.slots)
        if outcome.slots:
            times = [s.estimated_seconds for s in outcome.slots if s.estimated_seconds is not None]
            assignment.period_seconds = max(assignment.period_seconds, max(times, default=0.0))
    unused = [name for name in fleet.names if name not in used_nodes]
    explainer = NodeExplainer(fleet, [outcome.check for outcome in outcomes.values()], period.node_owner)
    assignment.excluded = LazyReasons(explainer.explain, unused)
    return assignment
