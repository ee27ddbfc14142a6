"""Exact matching of node-device tasks to nodes (pure): one task per node, every served task gets perRound nodes, and
under the time policies no task uses a node slower than its round-time limit (large groups; see node_devices)."""
from __future__ import annotations

import math

from .node_candidates import NodeCandidates, preference


class Matching:
    """Nodes held by node-device tasks (by task key); augmenting paths move a node to another task when that task
    can use a different one (Kuhn's algorithm), so feasibility checks are exact. `fixed` nodes never move."""

    def __init__(self, fixed: dict[int, str]):
        self.fixed = fixed
        self.owner: dict[int, str] = dict(fixed)
        self.held: dict[str, list[int]] = {}
        self.allowed: dict[str, list[int]] = {}
        self.cursor: dict[str, int] = {}

    def fill(self, key: str, per_round: int, allowed: list[int]) -> bool:
        """Give the task `per_round` nodes out of `allowed` (in that order of preference), moving other tasks'
        nodes when they can use others; False when that is impossible."""
        self.allowed[key] = allowed
        self.cursor.setdefault(key, 0)
        held = self.held.setdefault(key, [n for n, owner in self.fixed.items() if owner == key])
        while len(held) < per_round:
            if not self._augment(key, set()):
                return False
        return True

    def fill_or_leave(self, key: str, per_round: int, pinned: list[int], allowed: list[int]) -> bool:
        """`fill` with the `pinned` nodes fixed to the task first; when it fails the matching is left as it was."""
        state = dict(self.owner), {k: list(v) for k, v in self.held.items()}, dict(self.cursor)
        for node in pinned:
            self.fixed[node] = key
            self.owner[node] = key
        if self.fill(key, per_round, allowed):
            return True
        self.owner, self.held, self.cursor = state
        for node in pinned:
            self.fixed.pop(node, None)
        self.held.pop(key, None)
        return False

    def move(self, key: str, held: set[int], chosen: list[int]) -> None:
        """The task swaps the nodes it held for the ones it chose."""
        for node in held - set(chosen):
            del self.owner[node]
        for node in chosen:
            self.owner[node] = key

    def _augment(self, key: str, visited: set[int]) -> bool:
        allowed = self.allowed[key]
        position = self.cursor[key]
        while position < len(allowed):  # nodes never become free during a search: a cursor suffices
            node = allowed[position]
            position += 1
            if node not in self.owner:
                self.cursor[key] = position
                self._take(key, node)
                return True
        self.cursor[key] = position
        for node in allowed:
            holder = self.owner[node]
            if node in visited or holder == key or node in self.fixed:
                continue
            visited.add(node)
            if self._augment(holder, visited):
                self.held[holder].remove(node)
                self._take(key, node)
                return True
        return False

    def _take(self, key: str, node: int) -> None:
        self.owner[node] = key
        self.held[key].append(node)


class NodeTaskSolver:
    """Matchings of node-device tasks under a round-time floor: each task may use its candidates no slower than
    max(its own best round-time limit, the floor) (any candidate under the order policies), cheapest first."""

    def __init__(self, tasks: list[NodeCandidates]):
        self.limits: dict[str, float] = {}
        for task in tasks:
            self.limits[task.key] = task.options().own_best()[1] if task.timed else math.inf

    def threshold(self, task: NodeCandidates, floor: float) -> float:
        return max(self.limits[task.key], floor) if task.timed else math.inf

    def allowed(self, task: NodeCandidates, floor: float) -> list[int]:
        """The task's usable nodes, cheapest first."""
        nodes: list[int] = preference(task, self.threshold(task, floor)).tolist()
        return nodes

    def solve(self, served: list[NodeCandidates], floor: float) -> Matching | None:
        """A matching that gives every served task its devices under `floor`, None when there is none."""
        matching = Matching({})
        for task in sorted(served, key=lambda t: len(t.candidates)):
            if not matching.fill(task.key, task.request.per_round, self.allowed(task, floor)):
                return None
        return matching
