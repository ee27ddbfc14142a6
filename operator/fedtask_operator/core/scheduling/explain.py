"""Explanations (pure): why a node was left out of a period, and why a task waits."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import cached_property

import numpy as np

from ..quantities import format_milli
from .fleet import Fleet
from .matching import describe_selector, describe_taint, untolerated_taints
from .period import TaskCheck


class LazyReasons(Mapping[str, str]):
    """node -> every reason no task got it; each string is built on first access (the map can cover 10k nodes)."""

    def __init__(self, explain: Callable[[str], str], nodes: list[str]):
        self._explain = explain
        self._nodes = nodes
        self._cache: dict[str, str] = {}

    def __getitem__(self, node: str) -> str:
        if node not in self._cache:
            if node not in self._node_set:
                raise KeyError(node)
            self._cache[node] = self._explain(node)
        return self._cache[node]

    @cached_property
    def _node_set(self) -> set[str]:
        return set(self._nodes)

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return repr(dict(self))


class NodeExplainer:
    """Why each node was left out, from the period's final bookings and what every task was checked against."""

    def __init__(self, fleet: Fleet, checks: list[TaskCheck], node_owner: dict[int, str]):
        self.fleet = fleet
        self.checks = sorted(checks, key=lambda check: check.task.key)
        self.node_owner = node_owner

    @cached_property
    def troubles(self) -> list[tuple[TaskCheck, np.ndarray]]:
        """Per task (by key): the matching nodes with a task-specific reason (taint, resources, taken)."""
        troubles = []
        for check in self.checks:
            task = check.task
            trouble = task.matched & ~(task.tolerated & check.fits)
            if check.taken is not None:
                trouble |= task.matched & check.taken
            troubles.append((check, trouble))
        return troubles

    def explain(self, node_name: str) -> str:
        fleet = self.fleet
        node = fleet.index[node_name]
        reasons = []
        if not fleet.ready[node]:
            reasons.append("NotReady")
        if fleet.cordoned[node]:
            reasons.append("cordoned")
        matched_any = False
        qualified_for = []
        for check, trouble in self.troubles:
            task = check.task
            if not task.matched[node]:
                continue
            matched_any = True
            reason = self.task_reason(check, node) if trouble[node] else None
            if reason:
                reasons.append(f"{task.name}: {reason}")
            elif task.schedulable[node]:
                qualified_for.append(task.name)
        if not matched_any:
            reasons.append("matches no task's selector")
        elif qualified_for and not reasons:
            reasons.append(f"not needed (qualifies for {', '.join(qualified_for)})")
        return "; ".join(reasons)

    def task_reason(self, check: TaskCheck, node: int) -> str | None:
        """Why the task did not get `node` (None when the selector does not match or the node qualified)."""
        task = check.task
        if not task.matched[node]:
            return None
        reasons = []
        if not task.tolerated[node]:
            taints = untolerated_taints(list(self.fleet.taint_sets[self.fleet.taint_group[node]]),
                                        list(task.request.tolerations or ()))
            reasons += [f"taint {describe_taint(t)}" for t in taints]
        reasons += short_resources(check, node)
        if task.request.node_devices:
            owners = sorted((self.fleet.training.get(node, set()) | {self.node_owner.get(node, task.key)}) - {task.key})
            if owners:
                reasons.append(f"taken by {', '.join(owners)}")
        return ", ".join(reasons) or None


def short_resources(check: TaskCheck, node: int) -> list[str]:
    short = []
    for name, column, amount in check.task.requests:
        available = 0 if column is None else int(check.free[node, column])
        if available < amount:
            short.append(f"short of {name} ({format_milli(max(available, 0), name)} free, "
                         f"{format_milli(amount, name)} requested)")
    return short


def shortage_summary(fleet: Fleet, check: TaskCheck, qualifying: np.ndarray) -> str:
    """'0 of 5 nodes qualify: 3 short of nvidia.com/gpu (0 free, 1 requested), 2 NotReady'."""
    task = check.task
    matched = task.matched
    total = int(matched.sum())
    if total == 0:
        return f"no node matches the selector {describe_selector(task.request.selector)}"
    counts: dict[str, int] = {}
    remaining = matched & ~qualifying

    def count(label: str, mask: np.ndarray) -> None:
        nonlocal remaining
        hit = remaining & mask
        if hit.any():
            counts[label] = counts.get(label, 0) + int(hit.sum())
        remaining = remaining & ~hit

    count("NotReady", ~fleet.ready)
    count("cordoned", ~task.schedulable)
    hit = remaining & ~task.tolerated
    if hit.any():
        for node in np.flatnonzero(hit):
            taints = untolerated_taints(list(fleet.taint_sets[fleet.taint_group[node]]),
                                        list(task.request.tolerations or ()))
            label = f"with untolerated taint {describe_taint(taints[0])}"
            counts[label] = counts.get(label, 0) + 1
        remaining = remaining & ~hit
    for name, column, amount in task.requests:
        column_free = np.zeros(len(fleet), dtype=np.int64) if column is None else check.free[:, column]
        hit = remaining & (column_free < amount)
        if hit.any():
            low, high = int(column_free[hit].min()), int(column_free[hit].max())
            shown = format_milli(max(high, 0), name)
            free_text = f"{shown} free" if low == high or high <= 0 else f"at most {shown} free"
            counts[f"short of {name} ({free_text}, {format_milli(amount, name)} requested)"] = int(hit.sum())
            remaining = remaining & ~hit
    if check.taken is not None and (remaining & check.taken).any():
        owners: dict[str, int] = {}
        for node in np.flatnonzero(remaining & check.taken):
            holders = set(fleet.training.get(int(node), set()))
            if int(node) in check.taken_by:
                holders.add(check.taken_by[int(node)])
            for owner in sorted(holders - {task.key}) or ["another task"]:
                owners[owner] = owners.get(owner, 0) + 1
                break
        for owner, number in sorted(owners.items()):
            counts[f"taken by {owner}"] = number
    qualified = int((matched & qualifying).sum())
    parts = ", ".join(f"{number} {label}" for label, number in counts.items())
    return f"{qualified} of {total} nodes qualify" + (f": {parts}" if parts else "")


def waiting_for_nodes(fleet: Fleet, check: TaskCheck, candidates: np.ndarray, holders: dict[int, str]) -> str:
    """Why a node-device task waits: its shortage summary, and which higher-priority tasks hold its candidates
    (`holders`: node -> the task holding it)."""
    request = check.task.request
    qualifying = np.zeros(len(fleet), dtype=bool)
    qualifying[candidates] = True
    summary = shortage_summary(fleet, check, qualifying)
    if len(candidates) >= request.per_round:
        held_by: dict[str, int] = {}
        for node in candidates:
            holder = holders.get(int(node))
            if holder is not None:
                held_by[holder] = held_by.get(holder, 0) + 1
        held = ", ".join(f"{key}: {number}" for key, number in sorted(held_by.items()))
        summary += f"; higher-priority tasks hold {sum(held_by.values())} of them ({held})"
    return f"{summary}; needs {request.per_round} device{'s' if request.per_round != 1 else ''}"


def waiting_for_shards(fleet: Fleet, check: TaskCheck, qualifying: np.ndarray, placed: int) -> str:
    """Why a simulated-device task waits although it has enough shards: the nodes lack room for them."""
    per_round = check.task.request.per_round
    return f"room for {placed} of {per_round} simulated devices; {shortage_summary(fleet, check, qualifying)}"
