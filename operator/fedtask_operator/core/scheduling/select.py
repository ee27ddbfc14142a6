"""Joint device selection for one learning period across competing tasks (pure).

Per period: the fleet is read once (free resources, taints, who trains where); each task's candidates are computed
with vectorised masks; devices train at most one task at a time. Then
1. node-device tasks (hostPath/pvc data: a device is a node) are assigned jointly: when not all of them can be served
   (an exact matching says so), the highest-priority tasks are served first (aging raises the priority of waiting
   tasks) and the others wait; the served tasks' devices minimise the period's cost (objective.py: each task's round
   time in typical rounds plus its fairness weight times the unfairness of its participation), by the joint solver
   (joint.py: exact branch and bound where it is cheap, local search otherwise) for groups of competing tasks up to
   node_devices.JOINT_TASKS tasks, by a matching heuristic for larger groups (`node_devices`);
2. simulated-device tasks (builtin data) choose shards of their device pools the same way, pool by pool (`pools`),
   and the chosen shards are packed onto nodes by free resources in priority order, each shard on the node where it
   finishes first, every placement subtracting its requests (`shards`).
Why a node was left out is written on first access (`explain`).
"""
from __future__ import annotations

import math

from .explain import LazyReasons, NodeExplainer
from .fleet import Fleet, KubeObjects, build_fleet
from .node_devices import assign_node_tasks
from .period import Period
from .policies import POLICIES
from .pools import assign_pool_tasks
from .types import Assignment, DeviceRequest, TaskAssignment

__all__ = ["AGING_SECONDS", "POLICIES", "effective_priority", "select_devices"]

AGING_SECONDS = 60.0  # a waiting task gains one priority level per minute


def effective_priority(request: DeviceRequest, now: float | None) -> float:
    """The task's priority plus one level per AGING_SECONDS it has waited (so nobody starves)."""
    if now is None or request.waiting_since is None:
        return float(request.priority)
    return request.priority + max(0.0, now - request.waiting_since) // AGING_SECONDS


def select_devices(requests: list[DeviceRequest], nodes: Fleet | KubeObjects, pods: KubeObjects = (),
                   now: float | None = None, period_number: int | None = None) -> Assignment:
    """Assign devices to every task of this learning period; see the module docstring for the algorithm.
    `period_number` (the runtimes number their periods) is copied into the assignment."""
    fleet = nodes if isinstance(nodes, Fleet) else build_fleet(nodes, pods)
    seen: set[str] = set()
    for request in requests:
        if request.task in seen:
            raise ValueError(f"task {request.task}: requested twice in one period")
        seen.add(request.task)
    order = sorted(requests, key=lambda r: (-effective_priority(r, now),
                                            r.waiting_since if r.waiting_since is not None else math.inf, r.task))
    period = Period(fleet)
    tasks = [period.resolve(request) for request in order]
    outcomes = assign_node_tasks(period, [task for task in tasks if task.request.node_devices])
    outcomes.update(assign_pool_tasks(period, [task for task in tasks if not task.request.node_devices]))
    assignment = Assignment(period=period_number)
    used_nodes: set[str] = set()
    for key, outcome in sorted(outcomes.items()):
        times = [s.estimated_seconds for s in outcome.slots if s.estimated_seconds is not None]
        assignment.tasks[key] = TaskAssignment(
            devices=outcome.slots, waiting_reason=outcome.waiting_reason, period=period_number,
            round_seconds=max(times, default=0.0), time_scale=outcome.time_scale, fairness_weight=outcome.weight,
            unfairness=outcome.unfairness, jain=outcome.jain, solver=outcome.solver, optimal=outcome.optimal)
        used_nodes.update(slot.node for slot in outcome.slots)
        if outcome.slots:
            assignment.period_seconds = max(assignment.period_seconds, max(times, default=0.0))
    unused = [name for name in fleet.names if name not in used_nodes]
    explainer = NodeExplainer(fleet, [outcome.check for outcome in outcomes.values()], period.node_owner)
    assignment.excluded = LazyReasons(explainer.explain, unused)
    return assignment
