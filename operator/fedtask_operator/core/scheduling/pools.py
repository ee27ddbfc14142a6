"""Simulated devices (builtin data) in pools: which device trains which task this period (pure).

A pool is N simulated devices; device i holds shard i of the dataset of every task in the pool (spec.devices.pool;
by default a task has a pool of its own, of devices.count devices). A device trains at most one task at a time: one
per period, and none while a train pod of any task of the pool runs on it. The tasks of a pool are one group for the
joint solver (joint.py); the chosen shards are then placed on nodes by free resources (shards.place_shards), in
priority order across pools and node-device tasks (select.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..naming import device_pool_key, shard_index
from .joint import TaskOptions, solve_group
from .node_candidates import fairness_weight, policy_prices
from .node_matching import Matching
from .objective import jain_of, time_scale, unfairness
from .period import Period, TaskCheck, TaskInput, TaskOutcome
from .policies import TIME_POLICIES
from .shards import place_shards, shard_sizes, shard_work, typical_speed

JOINT_DEVICES = 4000  # pools whose tasks' candidates exceed this are shared out task by task (priority order)


@dataclass(frozen=True, eq=False)
class PoolCandidates:
    task: TaskInput
    check: TaskCheck
    count: int  # the task's devices in the pool (its shard count)
    candidates: np.ndarray  # shard indices free now
    work: np.ndarray  # per shard: seconds on one core-equivalent
    est: np.ndarray  # per shard: estimated seconds on a typical node
    participation: np.ndarray  # per shard
    price: np.ndarray  # per shard
    tau: float
    weight: float

    @property
    def key(self) -> str:
        return self.task.key

    @property
    def need(self) -> int:
        return self.task.request.per_round

    def options(self) -> TaskOptions:
        cand = self.candidates
        return TaskOptions(key=self.key, need=self.need, candidates=cand, est=self.est[cand], price=self.price[cand],
                           tau=self.tau, timed=self.task.request.policy in TIME_POLICIES)


@dataclass
class PoolPlan:
    """The period's shard choices for its builtin-data tasks, made pool by pool before any placement: shards are
    simulated devices, so who trains which shard does not depend on the nodes; placing them on nodes does (`place`),
    and that happens in priority order across every kind of task (select.py)."""

    options: dict[str, PoolCandidates]
    chosen: dict[str, tuple[list[int], str, bool]]
    waiting: dict[str, TaskOutcome]

    def place(self, period: Period, task: TaskInput) -> TaskOutcome:
        """The task's outcome: why it waits, or its chosen shards placed on nodes (booked in the period)."""
        if task.key in self.waiting:
            return self.waiting[task.key]
        option = self.options[task.key]
        shards, method, optimal = self.chosen[task.key]
        outcome = place_shards(period, task, shards, [float(option.work[s]) for s in shards])
        if outcome.waiting_reason is not None:
            return outcome
        after = option.participation.copy()
        after[shards] += 1
        mean = float(option.participation.mean()) if option.count else 0.0
        return TaskOutcome(check=outcome.check, slots=outcome.slots, solver=method, optimal=optimal,
                           time_scale=option.tau, weight=option.weight,
                           unfairness=unfairness(after, mean, option.need), jain=jain_of(after))


def plan_pool_tasks(period: Period, tasks: list[TaskInput]) -> PoolPlan:
    """Choose the shards of every builtin-data task (given in priority order), pool by pool."""
    pools: dict[str, list[TaskInput]] = {}
    for task in tasks:
        pools.setdefault(device_pool_key(task.key, task.request.pool), []).append(task)
    plan = PoolPlan(options={}, chosen={}, waiting={})
    for pool, members in pools.items():
        busy = period.fleet.pool_busy.get(pool, {})
        served: list[PoolCandidates] = []
        matching = Matching({})
        for task in members:  # priority order
            option = _pool_candidates(period, task, busy)
            plan.options[task.key] = option
            reason = _too_few(option, busy, pool)
            if reason is None and not matching.fill_or_leave(task.key, option.need, [],
                                                             option.candidates.tolist()):
                holders = sorted({key for key in matching.owner.values()})
                reason = (f"{_pool_name(pool)}: higher-priority tasks of the pool take its free devices "
                          f"({', '.join(holders)}); needs {option.need}")
            if reason is None:
                served.append(option)
            else:
                plan.waiting[task.key] = TaskOutcome(check=option.check, waiting_reason=reason)
        plan.chosen.update(_choose(served))
    return plan


def _pool_name(pool: str) -> str:
    return f"pool {pool}" if not pool.endswith("#own") else "its simulated devices"


def _too_few(option: PoolCandidates, busy: dict[int, str], pool: str) -> str | None:
    request = option.task.request
    if option.count < request.per_round:
        return f"spec.devices.perRound ({request.per_round}) exceeds the number of simulated devices ({option.count})"
    if len(option.candidates) >= request.per_round:
        return None
    training: dict[str, int] = {}
    for shard, task in busy.items():
        if shard < option.count:
            training[task] = training.get(task, 0) + 1
    held = ", ".join(f"{task}: {number}" for task, number in sorted(training.items()))
    return (f"{_pool_name(pool)}: {len(option.candidates)} of {option.count} devices free, the others train "
            f"({held}); needs {request.per_round}")


def _pool_candidates(period: Period, task: TaskInput, busy: dict[int, str]) -> PoolCandidates:
    request = task.request
    count = request.shard_count or int(task.matched.sum())
    free = np.ones(count, dtype=bool)
    for shard in busy:
        if shard < count:
            free[shard] = False
    for device in request.exclude:  # already in the task's round
        excluded = shard_index(device)
        if excluded is not None and excluded < count:
            free[excluded] = False
    candidates = np.flatnonzero(free)
    check = period.check(task)
    speed = typical_speed(period, task, check)
    work = shard_work(request, count, speed)
    est = work / speed
    for device, seconds in request.train_seconds.items():
        index = shard_index(device)
        if index is not None and index < count and seconds:
            est[index] = float(seconds)
    participation = np.full(count, float(request.participation_default))
    for device, rounds in request.participation.items():
        index = shard_index(device)
        if index is not None and index < count:
            participation[index] = rounds
    weight = fairness_weight(request)
    price = policy_prices(request, participation, float(participation.mean()) if count else 0.0, weight,
                          shard_sizes(request, count), est, candidates, explore=False)
    return PoolCandidates(task=task, check=check, count=count, candidates=candidates, work=work, est=est,
                          participation=participation, price=price, tau=time_scale(est[candidates]), weight=weight)


def _choose(served: list[PoolCandidates]) -> dict[str, tuple[list[int], str, bool]]:
    """Every served task's shards (the pool's tasks jointly), how they were chosen, whether provably optimal."""
    if not served:
        return {}
    if sum(len(option.candidates) for option in served) <= JOINT_DEVICES or len(served) == 1:
        solution = solve_group([option.options() for option in served])
        if solution is not None:
            return {key: (sorted(int(s) for s in shards), solution.method, solution.optimal)
                    for key, shards in solution.chosen.items()}
    taken: set[int] = set()  # a large shared pool: task by task, each its own best among the devices left
    picks = {}
    for option in served:
        options = option.options()
        keep = ~np.isin(options.candidates, list(taken))
        rest = TaskOptions(options.key, options.need, options.candidates[keep], options.est[keep],
                           options.price[keep], options.tau, options.timed)
        cost, limit = rest.own_best()
        alone = rest.alone(limit)[1] if math.isfinite(cost) else None
        shards = alone if alone is not None else rest.candidates[: rest.need]
        taken.update(int(s) for s in shards)
        picks[option.key] = (sorted(int(s) for s in shards), "greedy", False)
    return picks
