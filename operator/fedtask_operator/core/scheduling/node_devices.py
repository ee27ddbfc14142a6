"""Joint assignment of node devices to the period's node-device tasks (pure); see `select` for the algorithm."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .explain import waiting_for_nodes
from .node_candidates import NodeCandidates, node_candidates, preference
from .node_matching import Matching, NodeTaskSolver
from .period import Period, TaskInput, TaskOutcome
from .policies import TIME_POLICIES
from .types import DeviceSlot


def assign_node_tasks(period: Period, tasks: list[TaskInput]) -> dict[str, TaskOutcome]:
    """Assign node devices to the tasks (in priority order) and book them in the period."""
    if not tasks:
        return {}
    options, fixed = _fix_forced([node_candidates(period, task) for task in tasks])
    solver = NodeTaskSolver(fixed, options)
    matching = solver.solve(options, 0.0)
    if matching is None and any(task.rested is not None for task in options):
        # Resting devices must never make a task wait: with competition, every candidate counts again.
        options = [task.with_rested() for task in options]
        solver.measure(options)
        matching = solver.solve(options, 0.0)
    served = options
    waiting: dict[str, str] = {}
    floor = 0.0
    if matching is None:  # contention: serve in priority order, the rest wait
        options, waiting = _serve_in_priority_order(period, options, solver)
        served = [task for task in options if task.key not in waiting]
        for task in options:
            if task.key in waiting:
                solver.release(task.forced)
        matching = solver.solve(served, 0.0)
        if matching is None:
            matching, floor = _lowest_feasible_floor(solver, served)
    chosen = _choose_preferred(solver, matching, served, floor)
    period.book_node_devices([(task.task, nodes) for task, nodes in zip(served, chosen)])
    names, outcomes = period.fleet.names, {}
    for task, nodes in zip(served, chosen):
        slots = [DeviceSlot(device=names[n], node=names[n], estimated_seconds=round(float(task.est[n]), 6))
                 for n in nodes]
        outcomes[task.key] = TaskOutcome(check=task.check, slots=slots)
    for task in options:
        if task.key in waiting:
            outcomes[task.key] = TaskOutcome(check=task.check, waiting_reason=waiting[task.key])
    return outcomes


def _fix_forced(tasks: list[NodeCandidates]) -> tuple[list[NodeCandidates], dict[int, str]]:
    """Devices that fell behind train now, each for the first task (in priority order) that forces it."""
    fixed: dict[int, str] = {}
    kept = []
    for task in tasks:
        forced = tuple(n for n in task.forced if n not in fixed)
        for node in forced:
            fixed[node] = task.key
        kept.append(replace(task, forced=forced))
    return kept, fixed


def _serve_in_priority_order(period: Period, tasks: list[NodeCandidates],
                             solver: NodeTaskSolver) -> tuple[list[NodeCandidates], dict[str, str]]:
    """The tasks that can all get their devices, taken greedily by priority; the others wait with a reason.
    Returns every task (its forced devices less those a higher-priority task holds) and the waiting reasons."""
    matching = Matching({})
    kept, waiting = [], {}
    for task in tasks:
        task = replace(task, forced=tuple(n for n in task.forced if n not in matching.owner))
        kept.append(task)
        if not matching.fill_or_leave(task.key, task.request.per_round, list(task.forced),
                                      solver.allowed(task, math.inf)):
            waiting[task.key] = waiting_for_nodes(period.fleet, task.check, task.candidates, matching.owner)
    return kept, waiting


def _lowest_feasible_floor(solver: NodeTaskSolver, served: list[NodeCandidates]) -> tuple[Matching, float]:
    """The smallest round-time floor under which every served task gets its devices (binary search over the
    candidates' estimates), and its matching."""
    floors = np.unique(np.concatenate([t.est[t.candidates] for t in served
                                       if t.request.policy in TIME_POLICIES] or [np.zeros(0)]))
    if not len(floors):
        return solver.solve(served, math.inf), math.inf
    low, high = 0, len(floors) - 1  # floors[high] admits every candidate: feasible as the served set is
    matching = solver.solve(served, float(floors[high]))
    while low < high:
        middle = (low + high) // 2
        attempt = solver.solve(served, float(floors[middle]))
        if attempt is None:
            low = middle + 1
        else:
            matching, high = attempt, middle
    return matching, float(floors[high])


def _choose_preferred(solver: NodeTaskSolver, matching: Matching, served: list[NodeCandidates],
                      floor: float) -> list[list[int]]:
    """Each task swaps in free devices it prefers (fairness first for time-fair) without raising its round time."""
    chosen_per_task = []
    for task in served:
        held = set(matching.held.get(task.key, []))
        limit = max(solver.threshold(task, floor), max((float(task.est[n]) for n in held), default=0.0))
        if task.request.policy not in TIME_POLICIES:
            limit = math.inf
        chosen = list(task.forced)
        for node in preference(task, limit):
            if len(chosen) >= task.request.per_round:
                break
            node = int(node)
            owner = matching.owner.get(node)
            if node not in chosen and (owner is None or owner == task.key):
                chosen.append(node)
        matching.move(task.key, held, chosen)
        chosen_per_task.append(chosen)
    return chosen_per_task
