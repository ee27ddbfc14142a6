"""Joint device selection for one learning period across competing tasks (pure).

Per period: the fleet is read once (free resources, taints, who trains where); each task's candidates are computed
with vectorised masks; then
1. node-device tasks (hostPath/pvc data: a device is a node, one task per node) are assigned jointly as a bipartite
   matching: the highest-priority tasks are served first (aging raises the priority of waiting tasks), then the
   period's time cost is minimised by a threshold search (each task may use devices no slower than
   max(its own best possible round time, T); the smallest feasible T is found with exact augmenting-path matching);
   finally each task swaps in free devices it prefers (least participation, then most samples for
   `time-fair`, random among equals) at no time cost; `time-fair` forces devices that fell behind the mean and rests
   devices far ahead of it (see `ahead_limit`) while enough others qualify;
2. simulated-device tasks (builtin data, shards) are packed onto nodes by free resources in priority order, each shard
   on the node where it finishes first, every placement subtracting its requests.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.random

from ..naming import shard_device_id, shard_index
from ..quantities import QuantityError, format_milli, parse_resource_list
from .estimates import DEFAULT_SAMPLES, SECONDS_PER_SAMPLE_PER_CORE, is_gpu_resource
from .fleet import POD_COUNT, UNSCHEDULABLE_TAINT, Fleet, build_fleet
from .matching import (
    check_selector,
    check_tolerations,
    describe_selector,
    describe_taint,
    selector_requirements,
    tolerates,
    untolerated_taints,
)
from .types import Assignment, DeviceRequest, DeviceSlot, TaskAssignment

POLICIES = ("time-fair", "fastest", "random", "round-robin")
TIME_POLICIES = ("time-fair", "fastest")
DEFAULT_FAIRNESS_BOUND = 2.0  # rounds a device may fall behind its task's mean participation under `time-fair`...
DEFAULT_FAIRNESS_SHARE = 0.5  # ...or this share of the mean, whichever is larger (slow devices train less often)
FAIRNESS_AHEAD = 2.0  # time-fair: a device more than this many times the mean (plus the allowed lag) ahead sits out
AGING_SECONDS = 60.0  # a waiting task gains one priority level per minute


@dataclass
class _Task:
    request: DeviceRequest
    key: str
    name: str
    requests: list  # [(resource, column or None, milli)]
    gpu: bool
    matched: np.ndarray  # bool per node: the selector matches
    schedulable: np.ndarray  # bool per node: Ready and not cordoned (unless tolerated)
    tolerated: np.ndarray  # bool per node: every blocking taint tolerated
    free: np.ndarray | None = None  # the free resources this task was checked against
    fits: np.ndarray | None = None
    taken: np.ndarray | None = None  # node tasks: another task trains there
    candidates: np.ndarray | None = None  # node indices that qualify
    est: np.ndarray | None = None  # estimated seconds per node (node tasks) or per unit of work (shards)
    samples: np.ndarray | None = None  # node tasks: sample count per node (known, else the median of the known)
    participation: np.ndarray | None = None
    forced: list = field(default_factory=list)  # time-fair: devices that fell behind and must train now
    rested: np.ndarray | None = None  # time-fair: candidates far ahead of the mean, left out while others suffice
    lower_bound: float = math.inf  # the task's best possible round time alone
    slots: list = field(default_factory=list)
    waiting_reason: str | None = None


class _LazyReasons(Mapping):
    """node -> every reason no task got it; each string is built on first access (the map can cover 10k nodes)."""

    def __init__(self, explain, nodes: list[str]):
        self._explain = explain
        self._nodes = nodes
        self._cache: dict[str, str] = {}

    def __getitem__(self, node: str) -> str:
        if node not in self._cache:
            if node not in self._nodes_set:
                raise KeyError(node)
            self._cache[node] = self._explain(node)
        return self._cache[node]

    @property
    def _nodes_set(self) -> set:
        if not hasattr(self, "_set"):
            self._set = set(self._nodes)
        return self._set

    def __iter__(self):
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return repr(dict(self))


def allowed_lag(request: DeviceRequest, mean: float) -> float:
    """How far (in rounds) a device's participation may fall behind the task's mean before `time-fair` must pick it:
    the absolute bound early on, a share of the mean later, so fast devices may train more often than slow ones
    while every device keeps training at a steady fraction of the mean rate."""
    bound = request.fairness_bound if request.fairness_bound is not None else DEFAULT_FAIRNESS_BOUND
    share = request.fairness_share if request.fairness_share is not None else DEFAULT_FAIRNESS_SHARE
    return max(bound, share * mean)


def ahead_limit(request: DeviceRequest, mean: float) -> float:
    """The participation above which `time-fair` rests a device while others qualify: FAIRNESS_AHEAD times the
    task's mean plus the allowed lag. Without it the few fastest devices train in nearly every cheap round and the
    model drifts to their labels (non-IID); with it the cheap rounds rotate through more devices."""
    return FAIRNESS_AHEAD * mean + allowed_lag(request, mean)


def _median(values) -> float:
    ordered = np.sort(np.asarray(values, dtype=float))
    middle = len(ordered) // 2
    return float(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)


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
    context = _Context(fleet)
    tasks = [context.prepare(request) for request in order]
    node_tasks = [t for t in tasks if t.request.node_devices]
    _assign_node_tasks(context, node_tasks)
    for task in tasks:
        if not task.request.node_devices:
            _place_shards(context, task)
    assignment = Assignment()
    used_nodes = set()
    for task in sorted(tasks, key=lambda t: t.key):
        assignment.tasks[task.key] = TaskAssignment(devices=task.slots, waiting_reason=task.waiting_reason)
        used_nodes.update(slot.node for slot in task.slots)
        if task.slots:
            times = [s.estimated_seconds for s in task.slots if s.estimated_seconds is not None]
            assignment.period_seconds = max(assignment.period_seconds, max(times, default=0.0))
    unused = [name for name in fleet.names if name not in used_nodes]
    assignment.excluded = _LazyReasons(lambda node: context.explain(node, tasks), unused)
    return assignment


class _Context:
    """Per-period caches shared by all tasks: selector masks, toleration masks, the evolving free resources."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.free = fleet.free
        self.selector_cache: dict = {}
        self.toleration_cache: dict = {}
        self.has_key_cache: dict = {}
        n = len(fleet)
        self.training_any = np.zeros(n, dtype=bool)
        self.training_only: dict[str, list[int]] = {}
        for node, owners in fleet.training.items():
            self.training_any[node] = True
            if len(owners) == 1:
                self.training_only.setdefault(next(iter(owners)), []).append(node)
        self.node_owner: dict[int, str] = {}  # node -> node-device task that got it this period
        self.period_load = np.zeros(n)  # train pods placed on each node this period, by any task
        self.pod_column = fleet.column(POD_COUNT)

    # --- masks -----------------------------------------------------------------------------------------------
    def selector_mask(self, selector: dict | None) -> np.ndarray:
        requirements = tuple(selector_requirements(selector))
        if requirements not in self.selector_cache:
            fleet = self.fleet
            mask = np.ones(len(fleet), dtype=bool)
            for key, operator, values in requirements:
                groups = fleet.label_values(key)
                if operator in ("In", "NotIn"):
                    hit = np.zeros(len(fleet), dtype=bool)
                    for value in values:
                        if value in groups:
                            hit[groups[value]] = True
                    mask &= hit if operator == "In" else ~hit
                else:
                    has_key = self.has_key(key)
                    mask &= has_key if operator == "Exists" else ~has_key
            self.selector_cache[requirements] = mask
        return self.selector_cache[requirements]

    def has_key(self, key: str) -> np.ndarray:
        if key not in self.has_key_cache:
            mask = np.zeros(len(self.fleet), dtype=bool)
            for indices in self.fleet.label_values(key).values():
                mask[indices] = True
            self.has_key_cache[key] = mask
        return self.has_key_cache[key]

    def toleration_masks(self, tolerations) -> tuple[np.ndarray, bool]:
        """(nodes whose blocking taints are all tolerated, whether cordoned nodes are tolerated)."""
        key = repr(sorted(sorted(t.items()) for t in tolerations))
        if key not in self.toleration_cache:
            fleet = self.fleet
            per_group = np.array([not untolerated_taints(list(taints), tolerations) for taints in fleet.taint_sets])
            tolerates_cordon = any(tolerates(t, UNSCHEDULABLE_TAINT) for t in tolerations)
            self.toleration_cache[key] = (per_group[fleet.taint_group], tolerates_cordon)
        return self.toleration_cache[key]

    # --- per task ----------------------------------------------------------------------------------------------
    def prepare(self, request: DeviceRequest) -> _Task:
        where = f"task {request.task}"
        if request.policy not in POLICIES:
            raise ValueError(f"{where}: spec.scheduling.policy: must be one of {', '.join(POLICIES)}, "
                             f"got {request.policy!r}")
        if not isinstance(request.per_round, int) or request.per_round < 1:
            raise ValueError(f"{where}: spec.devices.perRound: must be an integer >= 1, got {request.per_round!r}")
        check_selector(request.selector, f"{where}: spec.devices.selector")
        tolerations = list(request.tolerations or ())
        check_tolerations(tolerations, f"{where}: spec.devices.tolerations")
        try:
            milli = parse_resource_list(request.requests, f"{where}: spec.devices.resources.requests")
        except QuantityError as error:
            raise ValueError(str(error)) from None
        fleet = self.fleet
        resources = [(name, fleet.column(name), amount) for name, amount in milli.items() if amount > 0]
        if self.pod_column is not None:
            resources.append((POD_COUNT, self.pod_column, 1000))
        tolerated, tolerates_cordon = self.toleration_masks(tolerations)
        schedulable = fleet.ready if tolerates_cordon else fleet.ready & ~fleet.cordoned
        return _Task(
            request=request, key=request.task, name=request.task.rsplit("/", 1)[-1], requests=resources,
            gpu=any(is_gpu_resource(name) for name, _, _ in resources),
            matched=self.selector_mask(request.selector), schedulable=schedulable, tolerated=tolerated,
        )

    def fit_mask(self, task: _Task, free: np.ndarray) -> np.ndarray:
        fits = np.ones(len(self.fleet), dtype=bool)
        for _, column, amount in task.requests:
            if column is None:
                fits[:] = False
            else:
                fits &= free[:, column] >= amount
        return fits

    def speed(self, task: _Task) -> np.ndarray:
        fleet = self.fleet
        speed = np.where(fleet.gpu_speed > 0, fleet.gpu_speed, fleet.cpu_speed) if task.gpu else fleet.cpu_speed
        return np.maximum(speed, 1e-3)

    # --- explanations --------------------------------------------------------------------------------------------
    def short_resources(self, task: _Task, node: int) -> list[str]:
        free = task.free if task.free is not None else self.free
        short = []
        for name, column, amount in task.requests:
            available = 0 if column is None else int(free[node, column])
            if available < amount:
                short.append(f"short of {name} ({format_milli(max(available, 0), name)} free, "
                             f"{format_milli(amount, name)} requested)")
        return short

    def task_reason(self, task: _Task, node: int) -> str | None:
        """Why `task` did not get `node` (None when the selector does not match or the node qualified)."""
        if not task.matched[node]:
            return None
        reasons = []
        if not task.tolerated[node]:
            taints = untolerated_taints(list(self.fleet.taint_sets[self.fleet.taint_group[node]]),
                                        list(task.request.tolerations or ()))
            reasons += [f"taint {describe_taint(t)}" for t in taints]
        reasons += self.short_resources(task, node)
        if task.request.node_devices:
            owners = sorted((self.fleet.training.get(node, set()) | {self.node_owner.get(node, task.key)}) - {task.key})
            if owners:
                reasons.append(f"taken by {', '.join(owners)}")
        return ", ".join(reasons) or None

    def trouble_masks(self, tasks: list[_Task]) -> list[tuple[_Task, np.ndarray]]:
        """Per task (by key): the matching nodes with a task-specific reason (taint, resources, taken)."""
        if getattr(self, "_trouble", None) is None:
            self._trouble = []
            for task in sorted(tasks, key=lambda t: t.key):
                fits = task.fits if task.fits is not None else self.fit_mask(task, self.free)
                trouble = task.matched & ~(task.tolerated & fits)
                if task.taken is not None:
                    trouble |= task.matched & task.taken
                self._trouble.append((task, trouble))
        return self._trouble

    def explain(self, node_name: str, tasks: list[_Task]) -> str:
        fleet = self.fleet
        node = fleet.index[node_name]
        reasons = []
        if not fleet.ready[node]:
            reasons.append("NotReady")
        if fleet.cordoned[node]:
            reasons.append("cordoned")
        matched_any = False
        qualified_for = []
        for task, trouble in self.trouble_masks(tasks):
            if not task.matched[node]:
                continue
            matched_any = True
            reason = self.task_reason(task, node) if trouble[node] else None
            if reason:
                reasons.append(f"{task.name}: {reason}")
            elif task.schedulable[node]:
                qualified_for.append(task.name)
        if not matched_any:
            reasons.append("matches no task's selector")
        elif qualified_for and not reasons:
            reasons.append(f"not needed (qualifies for {', '.join(qualified_for)})")
        return "; ".join(reasons)

    def shortage_summary(self, task: _Task, qualifying: np.ndarray) -> str:
        """'0 of 5 nodes qualify: 3 short of nvidia.com/gpu (0 free, 1 requested), 2 NotReady'."""
        fleet = self.fleet
        matched = task.matched
        total = int(matched.sum())
        if total == 0:
            return f"no node matches the selector {describe_selector(task.request.selector)}"
        counts: dict[str, int] = {}
        remaining = matched & ~qualifying

        def count(label: str, mask: np.ndarray) -> np.ndarray:
            nonlocal remaining
            hit = remaining & mask
            if hit.any():
                counts[label] = counts.get(label, 0) + int(hit.sum())
            remaining = remaining & ~hit
            return hit

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
        free = task.free if task.free is not None else self.free
        for name, column, amount in task.requests:
            column_free = np.zeros(len(fleet), dtype=np.int64) if column is None else free[:, column]
            hit = remaining & (column_free < amount)
            if hit.any():
                low, high = int(column_free[hit].min()), int(column_free[hit].max())
                shown = format_milli(max(high, 0), name)
                free_text = f"{shown} free" if low == high or high <= 0 else f"at most {shown} free"
                counts[f"short of {name} ({free_text}, {format_milli(amount, name)} requested)"] = int(hit.sum())
                remaining = remaining & ~hit
        if task.taken is not None and (remaining & task.taken).any():
            owners: dict[str, int] = {}
            for node in np.flatnonzero(remaining & task.taken):
                for owner in sorted(fleet.training.get(node, set()) - {task.key}) or ["another task"]:
                    owners[owner] = owners.get(owner, 0) + 1
                    break
            for owner, number in sorted(owners.items()):
                counts[f"taken by {owner}"] = number
        qualified = int((matched & qualifying).sum())
        parts = ", ".join(f"{number} {label}" for label, number in counts.items())
        return f"{qualified} of {total} nodes qualify" + (f": {parts}" if parts else "")


# --- node devices ------------------------------------------------------------------------------------------------

def _participation(fleet: Fleet, request: DeviceRequest) -> np.ndarray:
    participation = np.zeros(len(fleet))
    for device, rounds in request.participation.items():
        node = fleet.index.get(device)
        if node is not None:
            participation[node] = rounds
    return participation


def _node_estimates(context: _Context, task: _Task) -> np.ndarray:
    """Seconds per node: samples / speed from resources, calibrated by (and replaced with) observed durations."""
    fleet, request = context.fleet, task.request
    speed = context.speed(task)
    known_samples = [s for s in request.samples.values() if s]
    samples = np.full(len(fleet), _median(known_samples) if known_samples else float(DEFAULT_SAMPLES))
    for device, count in request.samples.items():
        node = fleet.index.get(device)
        if node is not None and count:
            samples[node] = count
    task.samples = samples
    est = samples * SECONDS_PER_SAMPLE_PER_CORE / speed
    observed = [(fleet.index[d], s) for d, s in request.train_seconds.items() if d in fleet.index and s is not None]
    if observed:
        nodes = np.array([n for n, _ in observed])
        seconds = np.array([s for _, s in observed], dtype=float)
        ratios = seconds / np.maximum(est[nodes], 1e-12)
        est = est * _median(ratios)
        est[nodes] = seconds
    return est


def _prepare_node_task(context: _Context, task: _Task) -> None:
    fleet, request = context.fleet, task.request
    task.free = context.free
    task.fits = context.fit_mask(task, context.free)
    taken = context.training_any.copy()
    own = context.training_only.get(task.key)
    if own:
        taken[own] = False
    task.taken = taken
    qualifying = task.matched & task.schedulable & task.tolerated & task.fits & ~taken
    task.candidates = np.flatnonzero(qualifying)
    task.est = _node_estimates(context, task)
    task.participation = _participation(fleet, request)
    if request.policy == "time-fair" and len(task.candidates):
        shares = task.participation[task.candidates]
        behind = task.candidates[shares < shares.mean() - allowed_lag(request, float(shares.mean()))]
        order = np.lexsort((task.est[behind], task.participation[behind]))
        task.forced = [int(n) for n in behind[order][: request.per_round]]
        ahead = shares > ahead_limit(request, float(shares.mean()))
        if ahead.any() and len(task.candidates) - int(ahead.sum()) >= request.per_round:
            task.rested = task.candidates[ahead]
            task.candidates = task.candidates[~ahead]


def _lower_bound(task: _Task, excluded: set) -> float:
    """The task's best possible round time on its own: its forced devices plus the fastest others."""
    if task.request.policy not in TIME_POLICIES:
        return math.inf
    est = task.est
    need = task.request.per_round - len(task.forced)
    bound = max((est[n] for n in task.forced), default=0.0)
    if need > 0:
        mask = np.ones(len(task.candidates), dtype=bool)
        if excluded:
            mask &= ~np.isin(task.candidates, list(excluded))
        others = est[task.candidates[mask]]
        if len(others) < need:
            return math.inf
        bound = max(bound, float(np.partition(others, need - 1)[need - 1]))
    return float(bound)


def _preference(task: _Task, threshold: float) -> np.ndarray:
    """The task's candidates no slower than `threshold`, most preferred first."""
    request, cand = task.request, task.candidates
    if request.policy in TIME_POLICIES:
        cand = cand[task.est[cand] <= threshold]
        if request.policy == "fastest":
            return cand[np.lexsort((cand, task.est[cand]))]
        # Least participation first; then, as the round takes the threshold's time anyway, the most data (statistical
        # utility, as in Oort) rather than the fastest: the same few small fast shards bias the model to their labels.
        # Equal sample counts (devices not seen yet) are explored in a per-round random order.
        explore = _random_permutation(request, len(cand))
        return cand[np.lexsort((cand, explore, -task.samples[cand], task.participation[cand]))]
    if request.policy == "random":
        return cand[_random_permutation(request, len(cand))]
    return cand[_rotation_order(request, task.participation[cand])]


def _random_permutation(request: DeviceRequest, size: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{request.task}/{request.round}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(size)


def _rotation_order(request: DeviceRequest, participation: np.ndarray) -> np.ndarray:
    """Least participation first; ties rotate with the round so every device gets its turn."""
    size = len(participation)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    rotation = (np.arange(size) - (request.round - 1) * request.per_round) % size
    return np.lexsort((rotation, participation))


class _Matching:
    """Nodes held by node-device tasks; augmenting paths move a node to another task when that task can use a
    different one (Kuhn's algorithm), so feasibility checks are exact."""

    def __init__(self, fixed: dict[int, _Task]):
        self.fixed = fixed
        self.owner: dict[int, _Task] = dict(fixed)
        self.held: dict[str, list[int]] = {}
        self.allowed: dict[str, list[int]] = {}
        self.cursor: dict[str, int] = {}

    def snapshot(self):
        return dict(self.owner), {k: list(v) for k, v in self.held.items()}, dict(self.cursor)

    def restore(self, state) -> None:
        self.owner, self.held, self.cursor = state

    def fill(self, task: _Task, allowed: list[int]) -> bool:
        self.allowed[task.key] = allowed
        self.cursor.setdefault(task.key, 0)
        held = self.held.setdefault(task.key, [n for n, t in self.fixed.items() if t is task])
        while len(held) < task.request.per_round:
            if not self._augment(task, set()):
                return False
        return True

    def _augment(self, task: _Task, visited: set) -> bool:
        allowed = self.allowed[task.key]
        position = self.cursor[task.key]
        while position < len(allowed):  # nodes never become free during a search: a cursor suffices
            node = allowed[position]
            position += 1
            if node not in self.owner:
                self.cursor[task.key] = position
                self._take(task, node)
                return True
        self.cursor[task.key] = position
        for node in allowed:
            holder = self.owner[node]
            if node in visited or holder is task or node in self.fixed:
                continue
            visited.add(node)
            if self._augment(holder, visited):
                self.held[holder.key].remove(node)
                self._take(task, node)
                return True
        return False

    def _take(self, task: _Task, node: int) -> None:
        self.owner[node] = task
        self.held[task.key].append(node)


def _assign_node_tasks(context: _Context, tasks: list[_Task]) -> None:
    if not tasks:
        return
    for task in tasks:
        _prepare_node_task(context, task)
    fixed: dict[int, _Task] = {}
    for task in tasks:  # priority order: a device behind on several tasks catches up on the first
        task.forced = [n for n in task.forced if n not in fixed]
        for node in task.forced:
            fixed[node] = task
    for task in tasks:
        task.lower_bound = _lower_bound(task, {n for n, t in fixed.items() if t is not task})

    def threshold(task: _Task, floor: float) -> float:
        return max(task.lower_bound, floor) if task.request.policy in TIME_POLICIES else math.inf

    def allowed(task: _Task, floor: float) -> list[int]:
        limit = threshold(task, floor)
        cand = task.candidates
        if task.request.policy in TIME_POLICIES:
            cand = cand[task.est[cand] <= limit]
            cand = cand[np.argsort(task.est[cand], kind="stable")]
        else:
            cand = _preference(task, limit)
        if fixed:
            others = [n for n, owner in fixed.items() if owner is not task]
            if others:
                cand = cand[~np.isin(cand, others)]
        return cand.tolist()

    def solve(served: list[_Task], floor: float) -> _Matching | None:
        matching = _Matching({n: t for n, t in fixed.items() if t in served})
        for task in sorted(served, key=lambda t: len(t.candidates)):
            if not matching.fill(task, allowed(task, floor)):
                return None
        return matching

    matching = solve(tasks, 0.0)
    if matching is None and any(task.rested is not None for task in tasks):
        # Resting devices must never make a task wait: with competition, every candidate counts again.
        for task in tasks:
            if task.rested is not None:
                task.candidates, task.rested = np.sort(np.concatenate([task.candidates, task.rested])), None
                task.lower_bound = _lower_bound(task, {n for n, t in fixed.items() if t is not task})
        matching = solve(tasks, 0.0)
    served = tasks
    floor = 0.0
    if matching is None:  # contention: serve in priority order, the rest wait
        served = _serve_in_priority_order(context, tasks, fixed, allowed)
        for task in tasks:
            if task not in served:
                for node in task.forced:
                    fixed.pop(node, None)
        matching = solve(served, 0.0)
        if matching is None:
            floors = np.unique(np.concatenate([t.est[t.candidates] for t in served
                                               if t.request.policy in TIME_POLICIES] or [np.zeros(0)]))
            low, high = 0, len(floors) - 1  # floors[high] admits every candidate: feasible as the served set is
            matching = solve(served, float(floors[high])) if len(floors) else solve(served, math.inf)
            while low < high:
                middle = (low + high) // 2
                attempt = solve(served, float(floors[middle]))
                if attempt is None:
                    low = middle + 1
                else:
                    matching, high = attempt, middle
            floor = float(floors[high]) if len(floors) else math.inf
    # Each task swaps in free devices it prefers (fairness first for time-fair) without raising its round time.
    for task in served:
        held = set(matching.held.get(task.key, []))
        limit = max(threshold(task, floor), max((float(task.est[n]) for n in held), default=0.0))
        if task.request.policy not in TIME_POLICIES:
            limit = math.inf
        chosen = list(task.forced)
        for node in _preference(task, limit):
            if len(chosen) >= task.request.per_round:
                break
            node = int(node)
            owner = matching.owner.get(node)
            if node not in chosen and (owner is None or owner is task):
                chosen.append(node)
        for node in held - set(chosen):
            del matching.owner[node]
        for node in chosen:
            matching.owner[node] = task
        task.slots = [DeviceSlot(device=context.fleet.names[n], node=context.fleet.names[n],
                                 estimated_seconds=round(float(task.est[n]), 6)) for n in chosen]
        for node in chosen:
            context.node_owner[node] = task.key
            context.period_load[node] += 1
    if served:
        free = context.free.copy()
        for task in served:
            for slot in task.slots:
                node = context.fleet.index[slot.node]
                for _, column, amount in task.requests:
                    free[node, column] -= amount
        context.free = free


def _serve_in_priority_order(context: _Context, tasks: list[_Task], fixed: dict, allowed) -> list[_Task]:
    """The tasks that can all get their devices, taken greedily by priority; the others wait with a reason."""
    matching = _Matching({})
    served = []
    for task in tasks:
        state = matching.snapshot()
        task.forced = [n for n in task.forced if n not in matching.owner]
        for node in task.forced:
            matching.fixed[node] = task
            matching.owner[node] = task
        if matching.fill(task, allowed(task, math.inf)):
            served.append(task)
            continue
        matching.restore(state)
        for node in task.forced:
            matching.fixed.pop(node, None)
        matching.held.pop(task.key, None)
        _explain_waiting(context, task, matching)
    return served


def _explain_waiting(context: _Context, task: _Task, matching: _Matching) -> None:
    request = task.request
    qualifying = np.zeros(len(context.fleet), dtype=bool)
    qualifying[task.candidates] = True
    summary = context.shortage_summary(task, qualifying)
    if len(task.candidates) >= request.per_round:
        holders: dict[str, int] = {}
        for node in task.candidates:
            holder = matching.owner.get(int(node))
            if holder is not None:
                holders[holder.key] = holders.get(holder.key, 0) + 1
        held = ", ".join(f"{key}: {number}" for key, number in sorted(holders.items()))
        summary += f"; higher-priority tasks hold {sum(holders.values())} of them ({held})"
    task.waiting_reason = f"{summary}; needs {request.per_round} device{'s' if request.per_round != 1 else ''}"


# --- simulated devices (shards) ----------------------------------------------------------------------------------

def _place_shards(context: _Context, task: _Task) -> None:
    fleet, request = context.fleet, task.request
    task.free = context.free
    task.fits = context.fit_mask(task, context.free)
    qualifying = task.matched & task.schedulable & task.tolerated & task.fits
    task.candidates = np.flatnonzero(qualifying)
    count = request.shard_count or int(task.matched.sum())
    if count < request.per_round:
        task.waiting_reason = (f"spec.devices.perRound ({request.per_round}) exceeds the number of simulated devices "
                               f"({count})")
        return
    shards = _choose_shards(task, count)
    speed = context.speed(task)
    cand = task.candidates
    # Train pods placed on one node this period share its speed. The best placement only ever uses the per_round
    # nodes with the highest speed per pod (an unused one of them beats any other node).
    shared = context.period_load
    per_pod = speed / (1 + shared)
    if len(cand) > request.per_round:
        cand = cand[np.argpartition(-per_pod[cand], request.per_round - 1)[: request.per_round]]
    cand = cand[np.lexsort((cand, -per_pod[cand]))]
    work = _shard_work(context, task, shards, speed)
    free = context.free
    rows = {int(n): free[n].copy() for n in cand}
    load = {int(n): 0 for n in cand}
    placements = []
    for shard, seconds in sorted(zip(shards, work), key=lambda sw: (-sw[1], sw[0])):
        best = None
        for node in rows:
            row = rows[node]
            if all(column is not None and row[column] >= amount for _, column, amount in task.requests):
                finish = seconds * (shared[node] + load[node] + 1) / speed[node]
                if best is None or finish < best[0]:
                    best = (finish, node)
        if best is None:
            break
        finish, node = best
        for _, column, amount in task.requests:
            rows[node][column] -= amount
        load[node] += 1
        placements.append((shard, node))
    if len(placements) < request.per_round:
        room = len(placements)
        summary = context.shortage_summary(task, qualifying)
        task.waiting_reason = (f"room for {room} of {request.per_round} simulated devices; {summary}")
        return
    free = free.copy()
    for node, row in rows.items():
        free[node] = row
    context.free = free
    seconds_of = dict(zip(shards, work))
    task.slots = [
        DeviceSlot(device=shard_device_id(shard), node=fleet.names[node],
                   estimated_seconds=round(float(seconds_of[shard] * (shared[node] + load[node]) / speed[node]), 6))
        for shard, node in sorted(placements)
    ]
    for node, placed in load.items():
        shared[node] += placed


def _choose_shards(task: _Task, count: int) -> list[int]:
    request = task.request
    participation = np.zeros(count)
    for device, rounds in request.participation.items():
        index = shard_index(device)
        if index is not None and index < count:
            participation[index] = rounds
    size = _shard_sizes(request, count)
    if request.policy == "random":
        order = _random_permutation(request, count)
    elif request.policy == "round-robin":
        order = _rotation_order(request, participation)
    elif request.policy == "fastest":
        order = np.lexsort((np.arange(count), size))
    else:
        behind = participation < participation.mean() - allowed_lag(request, float(participation.mean()))
        order = np.lexsort((np.arange(count), size, participation, ~behind))
    return sorted(int(i) for i in order[: request.per_round])


def _shard_sizes(request: DeviceRequest, count: int) -> np.ndarray:
    """Per shard: observed seconds when known, else samples; used for ordering under `fastest`/`time-fair`."""
    known = [s for s in request.samples.values() if s]
    size = np.full(count, _median(known) if known else float(DEFAULT_SAMPLES))
    for device, samples in request.samples.items():
        index = shard_index(device)
        if index is not None and index < count and samples:
            size[index] = samples
    return size


def _shard_work(context: _Context, task: _Task, shards: list[int], speed: np.ndarray) -> list[float]:
    """Seconds each shard would take on one core-equivalent, calibrated by observed train durations."""
    request = task.request
    observed = [(shard_index(d), s) for d, s in request.train_seconds.items() if s and shard_index(d) is not None]
    size = _shard_sizes(request, max([*shards, *(i for i, _ in observed)], default=0) + 1)
    work = [float(size[s]) * SECONDS_PER_SAMPLE_PER_CORE for s in shards]
    if observed:
        typical_speed = _median(speed[task.candidates]) if len(task.candidates) else 1.0
        ratios = [seconds / max(float(size[index]) * SECONDS_PER_SAMPLE_PER_CORE / typical_speed, 1e-12)
                  for index, seconds in observed]
        factor = _median(ratios)
        work = [w * factor for w in work]
    return work
