"""Node devices (hostPath/pvc data, a device is a node): which nodes a task may use this period, how long each would
take, and the order its policy prefers them in (pure)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .estimates import DEFAULT_SAMPLES, SECONDS_PER_SAMPLE_PER_CORE
from .fleet import Fleet
from .period import Period, TaskCheck, TaskInput
from .policies import TIME_POLICIES, ahead_limit, allowed_lag, median, random_permutation, rotation_order
from .types import DeviceRequest


@dataclass(frozen=True, eq=False)
class NodeCandidates:
    """A node-device task's options in this period."""

    check: TaskCheck
    candidates: np.ndarray  # node indices that qualify
    est: np.ndarray  # estimated seconds per node
    samples: np.ndarray  # sample count per node (known, else the median of the known)
    participation: np.ndarray  # rounds each node trained in for this task
    forced: tuple[int, ...] = ()  # time-fair: devices that fell behind and must train now
    rested: np.ndarray | None = None  # time-fair: candidates far ahead of the mean, left out while others suffice

    @property
    def task(self) -> TaskInput:
        return self.check.task

    @property
    def key(self) -> str:
        return self.check.task.key

    @property
    def request(self) -> DeviceRequest:
        return self.check.task.request

    def with_rested(self) -> NodeCandidates:
        """The same options with the rested devices counting again."""
        if self.rested is None:
            return self
        return replace(self, candidates=np.sort(np.concatenate([self.candidates, self.rested])), rested=None)


def node_candidates(period: Period, task: TaskInput) -> NodeCandidates:
    """The nodes the task may use now (free resources, no other task training there), their estimates, and under
    `time-fair` the devices it must take (fell behind) or may rest (far ahead)."""
    fleet, request = period.fleet, task.request
    taken = period.training_any.copy()
    own = period.training_only.get(task.key)
    if own:
        taken[own] = False
    check = period.check(task, taken)
    candidates = np.flatnonzero(task.matched & task.schedulable & task.tolerated & check.fits & ~taken)
    samples = _samples(fleet, request)
    est = _node_estimates(fleet, request, samples, period.speed(task))
    participation = _participation(fleet, request)
    forced: tuple[int, ...] = ()
    rested = None
    if request.policy == "time-fair" and len(candidates):
        shares = participation[candidates]
        behind = candidates[shares < shares.mean() - allowed_lag(request, float(shares.mean()))]
        order = np.lexsort((est[behind], participation[behind]))
        forced = tuple(int(n) for n in behind[order][: request.per_round])
        ahead = shares > ahead_limit(request, float(shares.mean()))
        if ahead.any() and len(candidates) - int(ahead.sum()) >= request.per_round:
            rested = candidates[ahead]
            candidates = candidates[~ahead]
    return NodeCandidates(check=check, candidates=candidates, est=est, samples=samples, participation=participation,
                          forced=forced, rested=rested)


def _participation(fleet: Fleet, request: DeviceRequest) -> np.ndarray:
    participation = np.zeros(len(fleet))
    for device, rounds in request.participation.items():
        node = fleet.index.get(device)
        if node is not None:
            participation[node] = rounds
    return participation


def _samples(fleet: Fleet, request: DeviceRequest) -> np.ndarray:
    """Sample count per node: the known ones, the median of the known (or the default) elsewhere."""
    known_samples = [s for s in request.samples.values() if s]
    samples = np.full(len(fleet), median(known_samples) if known_samples else float(DEFAULT_SAMPLES))
    for device, count in request.samples.items():
        node = fleet.index.get(device)
        if node is not None and count:
            samples[node] = count
    return samples


def _node_estimates(fleet: Fleet, request: DeviceRequest, samples: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """Seconds per node: samples / speed from resources, calibrated by (and replaced with) observed durations."""
    est = samples * SECONDS_PER_SAMPLE_PER_CORE / speed
    observed = [(fleet.index[d], s) for d, s in request.train_seconds.items() if d in fleet.index and s is not None]
    if observed:
        nodes = np.array([n for n, _ in observed])
        seconds = np.array([s for _, s in observed], dtype=float)
        ratios = seconds / np.maximum(est[nodes], 1e-12)
        est = est * median(ratios)
        est[nodes] = seconds
    return est


def lower_bound(task: NodeCandidates, excluded: list[int]) -> float:
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


def preference(task: NodeCandidates, threshold: float) -> np.ndarray:
    """The task's candidates no slower than `threshold`, most preferred first."""
    request, cand = task.request, task.candidates
    if request.policy in TIME_POLICIES:
        cand = cand[task.est[cand] <= threshold]
        if request.policy == "fastest":
            return cand[np.lexsort((cand, task.est[cand]))]
        # Least participation first; then, as the round takes the threshold's time anyway, the most data (statistical
        # utility, as in Oort) rather than the fastest: the same few small fast shards bias the model to their labels.
        # Equal sample counts (devices not seen yet) are explored in a per-round random order.
        explore = random_permutation(request, len(cand))
        return cand[np.lexsort((cand, explore, -task.samples[cand], task.participation[cand]))]
    if request.policy == "random":
        return cand[random_permutation(request, len(cand))]
    return cand[rotation_order(request, task.participation[cand])]
