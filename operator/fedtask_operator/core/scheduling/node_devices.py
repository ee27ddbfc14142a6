"""Joint assignment of node devices to the period's node-device tasks (pure); see `select` for the algorithm."""
from __future__ import annotations

import math

import numpy as np

from .explain import waiting_for_nodes
from .joint import solve_group
from .node_candidates import NodeCandidates, node_candidates, preference
from .node_matching import Matching, NodeTaskSolver
from .objective import jain_of, unfairness
from .period import Period, TaskInput, TaskOutcome
from .types import DeviceSlot

JOINT_TASKS = 8  # groups of competing tasks up to this size (and JOINT_DEVICES candidates) get the joint solver
JOINT_DEVICES = 2000


def assign_node_tasks(period: Period, tasks: list[TaskInput]) -> dict[str, TaskOutcome]:
    """Assign node devices to the tasks (in priority order) and book them in the period."""
    if not tasks:
        return {}
    options = [node_candidates(period, task) for task in tasks]
    waiting: dict[str, str] = {}
    if not _all_fit(options):  # contention: serve in priority order, the rest wait
        waiting = _serve_in_priority_order(period, options)
    served = [task for task in options if task.key not in waiting]
    chosen: dict[str, list[int]] = {}
    solver_of: dict[str, tuple[str, bool]] = {}
    for group in _competing_groups(served):
        picks, method, optimal = _choose(group)
        chosen.update(picks)
        solver_of.update({task.key: (method, optimal) for task in group})
    period.book_node_devices([(task.task, chosen[task.key]) for task in served])
    names, outcomes = period.fleet.names, {}
    for task in served:
        nodes = sorted(chosen[task.key], key=lambda n: (task.price[n], n))
        slots = [DeviceSlot(device=names[n], node=names[n], estimated_seconds=round(float(task.est[n]), 6))
                 for n in nodes]
        after = task.participation.copy()
        after[nodes] += 1
        universe = task.task.matched
        mean = float(task.participation[universe].mean()) if universe.any() else 0.0
        outcomes[task.key] = TaskOutcome(
            check=task.check, slots=slots, solver=solver_of[task.key][0], optimal=solver_of[task.key][1],
            time_scale=task.tau, weight=task.weight,
            unfairness=unfairness(after[universe], mean, task.request.per_round), jain=jain_of(after[universe]))
    for task in options:
        if task.key in waiting:
            outcomes[task.key] = TaskOutcome(check=task.check, waiting_reason=waiting[task.key])
    return outcomes


def _all_fit(tasks: list[NodeCandidates]) -> bool:
    matching = Matching({})
    for task in sorted(tasks, key=lambda t: len(t.candidates)):
        if not matching.fill(task.key, task.request.per_round, preference(task, math.inf).tolist()):
            return False
    return True


def _serve_in_priority_order(period: Period, tasks: list[NodeCandidates]) -> dict[str, str]:
    """The tasks that can all get their devices, taken greedily by priority; the others wait, with the reason."""
    matching = Matching({})
    waiting = {}
    for task in tasks:
        if not matching.fill_or_leave(task.key, task.request.per_round, [], preference(task, math.inf).tolist()):
            waiting[task.key] = waiting_for_nodes(period.fleet, task.check, task.candidates, matching.owner)
    return waiting


def _competing_groups(tasks: list[NodeCandidates]) -> list[list[NodeCandidates]]:
    """The tasks in groups that share no candidate with another group (each group is solved on its own)."""
    if len(tasks) <= 1:
        return [tasks] if tasks else []
    parent = list(range(len(tasks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    size = len(tasks[0].est)
    owner = np.full(size, -1)
    for i, task in enumerate(tasks):
        before = owner[task.candidates]
        for other in np.unique(before[before >= 0]):
            parent[root(int(other))] = root(i)
        owner[task.candidates] = i
    groups: dict[int, list[NodeCandidates]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(root(i), []).append(task)
    return list(groups.values())


def _choose(group: list[NodeCandidates]) -> tuple[dict[str, list[int]], str, bool]:
    """The group's devices per task, how they were found, and whether that is proved optimal."""
    if len(group) <= JOINT_TASKS and sum(len(t.candidates) for t in group) <= JOINT_DEVICES:
        nodes = np.unique(np.concatenate([t.candidates for t in group]))
        solution = solve_group([task.options(nodes) for task in group])
        if solution is not None:
            picks = {key: [int(nodes[i]) for i in devices] for key, devices in solution.chosen.items()}
            return picks, solution.method, solution.optimal
    return _greedy(group), "greedy", False


def _greedy(served: list[NodeCandidates]) -> dict[str, list[int]]:
    """Large groups: each task's own best round-time limit, raised together (a common floor) until an exact matching
    serves all; then each task swaps in the cheapest free devices within its limit."""
    solver = NodeTaskSolver(served)
    matching = solver.solve(served, 0.0)
    floor = 0.0
    if matching is None:
        matching, floor = _lowest_feasible_floor(solver, served)
    return _choose_preferred(solver, matching, served, floor)


def _lowest_feasible_floor(solver: NodeTaskSolver, served: list[NodeCandidates]) -> tuple[Matching, float]:
    """The smallest round-time floor under which every served task gets its devices (binary search over the
    candidates' estimates), and its matching."""
    floors = np.unique(np.concatenate([t.est[t.candidates] for t in served if t.timed] or [np.zeros(0)]))
    if not len(floors):
        unlimited = solver.solve(served, math.inf)
        if unlimited is None:
            raise AssertionError("the served set is feasible: without a floor it has a matching")
        return unlimited, math.inf
    low, high = 0, len(floors) - 1  # floors[high] admits every candidate: feasible as the served set is
    matching = solver.solve(served, float(floors[high]))
    if matching is None:
        raise AssertionError("the served set is feasible: the highest floor admits every candidate")
    while low < high:
        middle = (low + high) // 2
        attempt = solver.solve(served, float(floors[middle]))
        if attempt is None:
            low = middle + 1
        else:
            matching, high = attempt, middle
    return matching, float(floors[high])


def _choose_preferred(solver: NodeTaskSolver, matching: Matching, served: list[NodeCandidates],
                      floor: float) -> dict[str, list[int]]:
    """Each task swaps in the cheapest free devices it may use, without raising its round time."""
    chosen_per_task = {}
    for task in served:
        held = set(matching.held.get(task.key, []))
        limit = max(solver.threshold(task, floor), max((float(task.est[n]) for n in held), default=0.0))
        chosen: list[int] = []
        for node in preference(task, limit):
            if len(chosen) >= task.request.per_round:
                break
            node = int(node)
            owner = matching.owner.get(node)
            if owner is None or owner == task.key:
                chosen.append(node)
        matching.move(task.key, held, chosen)
        chosen_per_task[task.key] = chosen
    return chosen_per_task
