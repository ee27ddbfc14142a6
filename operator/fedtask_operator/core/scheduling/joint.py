"""The joint choice of devices for the tasks of one period that compete for the same devices (pure).

Input: tasks that are all to be served (feasibility and priorities are settled before, see node_devices/pools), each
with its candidate devices, their estimated seconds and fairness prices (objective.py). A device trains at most one
task per period. The solver minimises  sum_t T_t / tau_t + sum of the prices of the devices t gets  (objective.py),
where T_t is the slowest device t gets; tasks of the order policies (random, round-robin) have no time term and
prices that encode their order.

For fixed round-time limits theta_t (task t may use only devices with estimate <= theta_t) the best devices are a
min-cost transportation problem, solved exactly by successive shortest paths over the tasks (`assign`). The optimum
over all assignments is the minimum over the limits of  sum_t theta_t / tau_t + assign(theta)  (the optimal
assignment's own round times are among the limits), so:
- `independent`: each task's own optimum (a sweep over its limits); when no two tasks want the same device this is
  the joint optimum;
- `exact`: branch and bound over the limits, bounded below by each task's own optimum under its limit (exclusivity
  ignored), each leaf one `assign`; proved optimal when it finishes within EXACT_LEAVES;
- `local-search`: from the tasks' own limits (raised together until feasible), each task's limit moves to the best
  nearby value while the cost drops; used when the exact search would be too large, and as its first incumbent.
Large groups (many tasks over thousands of devices) use the matching heuristic in node_devices.py instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

EXACT_LEAVES = 4000  # assignments the exact search may evaluate before it settles for the best found
MAX_LIMITS = 96  # round-time limits per task; more distinct estimates are thinned to quantiles (heuristic)
SEARCH_WINDOW = 3  # local search: limits tried on each side of a task's current one
SEARCH_ROUNDS = 8
EPS = 1e-12


@dataclass(frozen=True, eq=False)
class TaskOptions:
    """One task's options in a group: candidates (device indices of the group) with estimates and prices."""

    key: str
    need: int
    candidates: np.ndarray  # int device indices
    est: np.ndarray  # seconds, aligned with candidates
    price: np.ndarray  # fairness (and tie-break) price, aligned with candidates
    tau: float = 1.0  # time scale: the time term is T / tau
    timed: bool = True  # False: random / round-robin (no time term, no limit)

    @cached_property
    def limits(self) -> np.ndarray:
        """The round-time limits worth trying: the distinct estimates from the need-th fastest on (thinned to
        MAX_LIMITS quantiles when there are more); infinity for the order policies."""
        if not self.timed:
            return np.array([math.inf])
        values = np.unique(self.est)
        if len(values) and len(self.est) >= self.need >= 1:
            values = values[values >= np.partition(self.est, self.need - 1)[self.need - 1]]
        if len(values) > MAX_LIMITS:
            values = values[np.unique(np.round(np.linspace(0, len(values) - 1, MAX_LIMITS)).astype(int))]
        return values

    @property
    def capped(self) -> bool:
        return self.timed and len(self.limits) == MAX_LIMITS and len(np.unique(self.est)) > MAX_LIMITS

    def undominated(self) -> TaskOptions:
        """The same task with only the devices an optimum can need: per price level (prices rounded to 1e-5, so
        tie-breaks do not count) its `need` fastest; any other device has `need` devices at least as cheap and
        as fast beside it."""
        if len(self.candidates) <= 4 * max(self.need, 16):
            return self
        level = np.round(self.price, 5)
        order = np.lexsort((self.est, level))
        sorted_level = level[order]
        starts = np.flatnonzero(np.r_[True, sorted_level[1:] != sorted_level[:-1]])
        group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        keep = order[np.arange(len(order)) - group_start < self.need]
        return TaskOptions(self.key, self.need, self.candidates[keep], self.est[keep], self.price[keep], self.tau,
                           self.timed)

    def time_cost(self, limit: float) -> float:
        return limit / self.tau if self.timed else 0.0

    def alone(self, limit: float) -> tuple[float, np.ndarray | None]:
        """(cost, devices) of the task's best choice under `limit`, ignoring other tasks."""
        allowed = self.est <= limit + EPS
        if int(allowed.sum()) < self.need:
            return math.inf, None
        prices = self.price[allowed]
        picks = np.argpartition(prices, self.need - 1)[: self.need] if self.need < len(prices) else \
            np.arange(len(prices))
        chosen = self.candidates[allowed][picks]
        real = float(self.est[allowed][picks].max()) if self.timed else 0.0
        return self.time_cost(real) + float(prices[picks].sum()), chosen

    def bound(self, limit: float) -> float:
        """limit / tau plus the task's cheapest prices under `limit`: no assignment under `limit` costs the task less
        (its round time is at most the limit, not less in this bound; other tasks are ignored)."""
        prices = self.price[self.est <= limit + EPS]
        if len(prices) < self.need:
            return math.inf
        cheapest = np.partition(prices, self.need - 1)[: self.need] if self.need < len(prices) else prices
        return self.time_cost(limit) + float(cheapest.sum())

    def own_best(self) -> tuple[float, float]:
        """(cost, limit) of the task's own optimum."""
        reduced = self.undominated()
        best = (math.inf, math.inf)
        for limit in reduced.limits:
            cost, _ = reduced.alone(float(limit))
            if cost < best[0] - EPS:
                best = (cost, float(limit))
        return best


@dataclass
class GroupSolution:
    chosen: dict[str, np.ndarray]
    cost: float
    method: str  # independent | exact | local-search
    optimal: bool  # proved optimal for the objective (an exhaustive argument, not a heuristic's guess)


def _chosen(devices: np.ndarray | None) -> np.ndarray:
    """A task's devices under a limit its own optimum found feasible (never None there)."""
    if devices is None:
        raise AssertionError("a finite own optimum has devices")
    return devices


def solve_group(tasks: list[TaskOptions]) -> GroupSolution | None:
    """The best devices for every task (all must be served); None when they cannot all be served."""
    if not tasks:
        return GroupSolution({}, 0.0, "independent", True)
    own = [task.own_best() for task in tasks]
    if any(math.isinf(cost) for cost, _ in own):
        return None
    picks = [_chosen(task.alone(limit)[1]) for task, (_, limit) in zip(tasks, own)]
    flat = np.concatenate(picks)
    if len(np.unique(flat)) == len(flat):
        return GroupSolution({t.key: p for t, p in zip(tasks, picks)}, sum(c for c, _ in own), "independent",
                             not any(t.capped for t in tasks))
    solver = _Joint(tasks)
    incumbent = solver.local_search([limit for _, limit in own])
    if incumbent is None:
        return None
    exact = solver.branch_and_bound(incumbent)
    return exact


class _Joint:
    def __init__(self, tasks: list[TaskOptions]):
        self.tasks = tasks
        size = int(max(int(t.candidates.max()) for t in tasks if len(t.candidates)) + 1)
        self.size = size
        self.price = np.full((len(tasks), size), math.inf)
        self.est = np.full((len(tasks), size), math.inf)
        for i, task in enumerate(tasks):
            self.price[i, task.candidates] = task.price
            self.est[i, task.candidates] = task.est
        self.evaluations = 0
        self.cache: dict[tuple[float, ...], tuple[float, list[np.ndarray]] | None] = {}

    # --- the exact inner problem: min-cost transportation under fixed limits ----------------------------------
    def assign(self, limits: list[float]) -> tuple[float, list[np.ndarray]] | None:
        """(cost, devices per task) of the best assignment under `limits`; None when infeasible."""
        key = tuple(limits)
        if key in self.cache:
            return self.cache[key]
        self.evaluations += 1
        result = self._assign(limits)
        self.cache[key] = result
        return result

    def _assign(self, limits: list[float]) -> tuple[float, list[np.ndarray]] | None:
        tasks, m = self.tasks, len(self.tasks)
        price = np.where(self.est <= np.array(limits)[:, None] + EPS, self.price, math.inf)
        order = []  # per task: its allowed devices, cheapest first (free devices are taken in this order)
        for i in range(m):
            allowed = np.flatnonzero(np.isfinite(price[i]))
            if len(allowed) < tasks[i].need:
                return None
            order.append(allowed[np.lexsort((allowed, price[i, allowed]))])
        owner = np.full(self.size, -1)
        cursor = [0] * m
        remaining = np.array([t.need for t in tasks])
        for _ in range(int(remaining.sum())):
            terminal = np.full(m, math.inf)
            terminal_device = np.full(m, -1)
            for i in range(m):
                devices = order[i]
                while cursor[i] < len(devices) and owner[devices[cursor[i]]] >= 0:
                    cursor[i] += 1  # a device never becomes free again during the augmentations
                if cursor[i] < len(devices):
                    terminal_device[i] = devices[cursor[i]]
                    terminal[i] = price[i, terminal_device[i]]
            # steal[a, b]: the cheapest change for a to take one of b's devices (b then needs another)
            steal = np.full((m, m), math.inf)
            steal_device = np.full((m, m), -1)
            owned = np.flatnonzero(owner >= 0)
            if len(owned):
                holders = owner[owned]
                delta = price[:, owned] - price[holders, owned][None, :]
                for b in np.unique(holders):
                    columns = np.flatnonzero(holders == b)
                    sub = delta[:, columns]
                    best = np.argmin(sub, axis=1)
                    steal[:, b] = sub[np.arange(m), best]
                    steal_device[:, b] = owned[columns][best]
                np.fill_diagonal(steal, math.inf)
            distance = np.where(remaining > 0, 0.0, math.inf)
            previous = np.full(m, -1)
            for _ in range(m):
                through = distance[:, None] + steal
                via = np.argmin(through, axis=0)
                better = through[via, np.arange(m)] < distance - 1e-12
                if not better.any():
                    break
                distance = np.where(better, through[via, np.arange(m)], distance)
                previous = np.where(better, via, previous)
            total = distance + terminal
            last = int(np.argmin(total))
            if not math.isfinite(total[last]):
                return None
            owner[terminal_device[last]] = last
            receiver = last
            seen = 0
            while previous[receiver] >= 0 and seen <= m:
                thief = int(previous[receiver])
                owner[steal_device[thief, receiver]] = thief
                receiver = thief
                seen += 1
            remaining[receiver] -= 1
        chosen = [np.flatnonzero(owner == i) for i in range(m)]
        cost = 0.0
        for i, task in enumerate(tasks):
            devices = chosen[i]
            cost += float(self.price[i, devices].sum())
            if task.timed:
                cost += task.time_cost(float(self.est[i, devices].max()))
        return cost, chosen

    # --- searches over the limits -------------------------------------------------------------------------------
    def local_search(self, start: list[float]) -> GroupSolution | None:
        """From the tasks' own limits (raised together until feasible), move each task's limit to the best nearby
        value while the cost drops."""
        tasks = self.tasks
        limits = list(start)
        result = self.assign(limits)
        if result is None:
            floors = np.unique(np.concatenate([t.limits for t in tasks if t.timed] or [np.zeros(0)]))
            low, high = 0, len(floors) - 1
            if not len(floors) or self.assign([max(s, float(floors[high])) for s in start]) is None:
                return None  # cannot happen for a feasible served set (every candidate allowed)
            while low < high:
                middle = (low + high) // 2
                if self.assign([max(s, float(floors[middle])) for s in start]) is None:
                    low = middle + 1
                else:
                    high = middle
            limits = [max(s, float(floors[high])) if t.timed else s for s, t in zip(start, tasks)]
            result = self.assign(limits)
            if result is None:
                return None  # the binary search ended on a feasible floor: cannot happen
        best_cost, _ = result
        for _ in range(SEARCH_ROUNDS):
            improved = False
            for i, task in enumerate(tasks):
                if not task.timed:
                    continue
                position = int(np.searchsorted(task.limits, limits[i] - EPS))
                window = task.limits[max(0, position - SEARCH_WINDOW): position + SEARCH_WINDOW + 1]
                for limit in window:
                    trial = limits[:i] + [float(limit)] + limits[i + 1:]
                    attempt = self.assign(trial)
                    if attempt is not None and attempt[0] < best_cost - 1e-12:
                        best_cost, limits, improved = attempt[0], trial, True
            if not improved:
                break
        final = self.assign(limits)
        if final is None:
            return None  # limits only ever move to feasible values: cannot happen
        cost, chosen = final
        return GroupSolution({t.key: c for t, c in zip(tasks, chosen)}, cost, "local-search", False)

    def branch_and_bound(self, incumbent: GroupSolution) -> GroupSolution:
        """The exact optimum over the limits (bounded by each task's own optimum), starting from `incumbent`."""
        tasks = self.tasks
        bounds = []  # per task: (limit, the task's own cost under it) sorted by that cost
        for task in tasks:
            options = [(float(limit), task.bound(float(limit))) for limit in task.limits]
            options = [(limit, cost) for limit, cost in options if math.isfinite(cost)]
            options.sort(key=lambda option: option[1])
            bounds.append(options)
        rest = [0.0] * (len(tasks) + 1)  # the best possible cost of tasks i.. (each alone)
        for i in range(len(tasks) - 1, -1, -1):
            rest[i] = rest[i + 1] + (bounds[i][0][1] if bounds[i] else math.inf)
        best_cost = [incumbent.cost]  # lists: the nested search updates them
        best_chosen = [[incumbent.chosen[t.key] for t in tasks]]
        leaves = [0]
        limits: list[float] = []

        def search(i: int, partial: float) -> bool:
            if partial + rest[i] >= best_cost[0] - 1e-12:
                return True
            if i == len(tasks):
                leaves[0] += 1
                if leaves[0] > EXACT_LEAVES:
                    return False
                result = self.assign(limits)
                if result is not None and result[0] < best_cost[0] - 1e-12:
                    best_cost[0], best_chosen[0] = result
                return True
            for limit, cost in bounds[i]:
                if partial + cost + rest[i + 1] >= best_cost[0] - 1e-12:
                    break  # sorted by cost: every later limit is bounded out too
                limits.append(limit)
                finished = search(i + 1, partial + cost)
                limits.pop()
                if not finished:
                    return False
            return True

        finished = search(0, 0.0)
        improved = best_cost[0] < incumbent.cost - 1e-12
        return GroupSolution({t.key: c for t, c in zip(tasks, best_chosen[0])}, best_cost[0],
                             "exact" if finished or improved else incumbent.method,
                             finished and not any(t.capped for t in tasks))
