"""Joint device selection for one learning period across competing tasks (pure).

Per period: the fleet is read once (free resources, taints, who trains where); each task's candidates are computed
with vectorised masks; devices train at most one task at a time. The tasks are taken in priority order (then the
longest waiting first), whatever their kind: the shards of the simulated-device tasks are chosen pool by pool first
(shards are not nodes, so that choice needs no node), then the tasks take node resources in that order, a run of
consecutive node-device tasks jointly. A node holding a train pod placed earlier in the period is taken for the
node-device tasks after it (a node device trains one task at a time); shards share nodes by free resources.
1. node-device tasks (hostPath/pvc data: a device is a node) are assigned jointly: when not all of them can be served
   (an exact matching says so), the highest-priority tasks are served first (aging raises the priority of waiting
   tasks) and the others wait; the served tasks' devices minimise the period's cost (objective.py: each task's round
   time in typical rounds plus its fairness weight times the unfairness of its participation), by the joint solver
   (joint.py: exact branch and bound where it is cheap, local search otherwise) for groups of competing tasks up to
   node_devices.JOINT_TASKS tasks, by a matching heuristic for larger groups (`node_devices`);
2. simulated-device tasks (builtin data) choose shards of their device pools the same way, pool by pool (`pools`),
   and the chosen shards are packed onto nodes by free resources in their turn, each shard on the node where it
   finishes first, every placement subtracting its requests (`shards`).
Why a node was left out is written on first access (`explain`).
"""
from __future__ import annotations

import math

from .explain import LazyReasons, NodeExplainer
from .fleet import Fleet, KubeObjects, PodObjects, build_fleet
from .node_devices import assign_node_tasks
from .period import Period, TaskInput, TaskOutcome
from .policies import POLICIES
from .pools import plan_pool_tasks
from .types import Assignment, DeviceRequest, TaskAssignment

__all__ = ["AGING_SECONDS", "POLICIES", "effective_priority", "select_devices"]

AGING_SECONDS = 60.0  # a waiting task gains one priority level per minute


def effective_priority(request: DeviceRequest, now: float | None) -> float:
    """The task's priority plus one level per AGING_SECONDS it has waited (so nobody starves)."""
    if now is None or request.waiting_since is None:
        return float(request.priority)
    return request.priority + max(0.0, now - request.waiting_since) // AGING_SECONDS


def select_devices(requests: list[DeviceRequest], nodes: Fleet | KubeObjects, pods: PodObjects = (),
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
    tasks, rejected = [], {}
    for request in order:
        try:
            tasks.append(period.resolve(request))
        except ValueError as error:  # one task's unreadable request (cpu: "-1") is that task's problem alone
            rejected[request.task] = str(error)
    plan = plan_pool_tasks(period, [task for task in tasks if not task.request.node_devices])
    outcomes: dict[str, TaskOutcome] = {}
    run: list[TaskInput] = []  # consecutive node-device tasks, assigned jointly
    for task in tasks:  # priority order across both kinds: node resources go to the higher priority first
        if task.request.node_devices:
            run.append(task)
            continue
        outcomes.update(assign_node_tasks(period, run))
        run = []
        outcomes[task.key] = plan.place(period, task)
    outcomes.update(assign_node_tasks(period, run))
    assignment = Assignment(period=period_number)
    for key, reason in rejected.items():
        assignment.tasks[key] = TaskAssignment(waiting_reason=reason, period=period_number, rejected=True)
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
