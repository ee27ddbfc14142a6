"""Node devices (hostPath/pvc data, a device is a node): which nodes a task may use this period, how long each would
take, and the order its policy prefers them in (pure)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .estimates import DEFAULT_SAMPLES, SECONDS_PER_SAMPLE_PER_CORE
from .fleet import Fleet
from .joint import TaskOptions
from .objective import DEFAULT_FAIRNESS_WEIGHT, TIE, fairness_prices, time_scale
from .period import Period, TaskCheck, TaskInput
from .policies import TIME_POLICIES, median, random_permutation, random_shift, rotation_order
from .types import DeviceRequest


@dataclass(frozen=True, eq=False)
class NodeCandidates:
    """A node-device task's options in this period."""

    check: TaskCheck
    candidates: np.ndarray  # node indices that qualify
    est: np.ndarray  # estimated seconds per node
    samples: np.ndarray  # sample count per node (known, else the median of the known)
    participation: np.ndarray  # rounds each node trained in for this task
    price: np.ndarray  # per node: the fairness price of selecting it (objective.py), with tie-breaks
    tau: float  # the task's time scale (objective.py)
    weight: float  # the fairness weight in force

    @property
    def task(self) -> TaskInput:
        return self.check.task

    @property
    def key(self) -> str:
        return self.check.task.key

    @property
    def request(self) -> DeviceRequest:
        return self.check.task.request

    @property
    def timed(self) -> bool:
        return self.request.policy in TIME_POLICIES

    def options(self, nodes: np.ndarray | None = None) -> TaskOptions:
        """The task as the joint solver sees it (device indices: positions in `nodes`, sorted and holding every
        candidate, when given)."""
        cand = self.candidates
        devices = cand if nodes is None else np.searchsorted(nodes, cand).astype(np.int64)
        return TaskOptions(key=self.key, need=self.request.per_round, candidates=devices, est=self.est[cand],
                           price=self.price[cand], tau=self.tau, timed=self.timed)


def node_candidates(period: Period, task: TaskInput) -> NodeCandidates:
    """The nodes the task may use now (free resources, no other task training there), their estimates and prices."""
    fleet, request = period.fleet, task.request
    taken = period.training_any.copy()
    own = period.training_only.get(task.key)
    if own:
        taken[own] = False
    taken |= period.booked  # a task placed earlier this period (either kind) booked it
    check = period.check(task, taken)
    in_round = [fleet.index[name] for name in request.exclude if name in fleet.index]  # already in the task's round
    usable = task.matched & task.schedulable & task.tolerated & check.fits & ~taken
    usable[in_round] = False
    candidates = np.flatnonzero(usable)
    samples = _samples(fleet, request)
    est = _node_estimates(fleet, request, samples, period.speed(task))
    participation = _participation(fleet, request)
    universe = participation[task.matched]
    mean = float(universe.mean()) if len(universe) else 0.0
    weight = fairness_weight(request)
    price = policy_prices(request, participation, mean, weight, samples, est, candidates)
    return NodeCandidates(check=check, candidates=candidates, est=est, samples=samples, participation=participation,
                          price=price, tau=time_scale(est[candidates]), weight=weight)


def fairness_weight(request: DeviceRequest) -> float:
    """The weight of unfairness in the task's cost: its own, else the default; 0 for every policy but time-fair
    (`fastest` is time-fair at weight 0; the order policies have no cost to weigh)."""
    if request.policy != "time-fair":
        return 0.0
    return DEFAULT_FAIRNESS_WEIGHT if request.fairness_weight is None else float(request.fairness_weight)


def policy_prices(request: DeviceRequest, participation: np.ndarray, mean: float, weight: float,
                  samples: np.ndarray, est: np.ndarray, candidates: np.ndarray, explore: bool = True) -> np.ndarray:
    """Per device (arrays indexed like `participation`): the price the solver minimises for this task.

    time-fair: the fairness price (objective.py), then, at no real cost, the most data (statistical utility, as in
    Oort: the round takes its time either way, and the same few small fast shards would bias the model to their
    labels), then a per-round random order among equals (`explore`; else the lower index); fastest: the faster
    device among equals; random and round-robin: their order (tiny prices, no time term)."""
    size = len(participation)
    price = np.zeros(size)
    if not len(candidates):
        return price
    if request.policy == "time-fair":
        price[candidates] = fairness_prices(participation[candidates], mean, request.per_round, weight)
        most = float(samples[candidates].max()) or 1.0
        order = explore_order(request, candidates) if explore else candidates / max(len(participation), 1)
        price[candidates] += TIE * (1 - samples[candidates] / most) + TIE * 1e-3 * order
    elif request.policy == "fastest":
        slowest = float(est[candidates].max()) or 1.0
        price[candidates] = TIE * est[candidates] / slowest
    else:
        order = random_permutation(request, len(candidates)) if request.policy == "random" else \
            rotation_order(request, participation[candidates])
        rank = np.empty(len(candidates))
        rank[order] = np.arange(len(candidates))
        price[candidates] = TIE * rank / len(candidates)
    return price


def _participation(fleet: Fleet, request: DeviceRequest) -> np.ndarray:
    participation = np.full(len(fleet), float(request.participation_default))
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
    est: np.ndarray = samples * SECONDS_PER_SAMPLE_PER_CORE / speed
    observed = [(fleet.index[d], s) for d, s in request.train_seconds.items() if d in fleet.index and s is not None]
    if observed:
        nodes = np.array([n for n, _ in observed])
        seconds = np.array([s for _, s in observed], dtype=float)
        ratios = seconds / np.maximum(est[nodes], 1e-12)
        est = est * median(ratios)
        est[nodes] = seconds
    return est


def explore_order(request: DeviceRequest, devices: np.ndarray) -> np.ndarray:
    """A value in [0, 1) per device that orders equals differently every round (cheap: a golden-ratio sequence
    shifted by the task and round), so devices not seen yet are explored in turn."""
    shift = random_shift(request)
    return (devices.astype(float) * 0.6180339887498949 + shift) % 1.0


def preference(task: NodeCandidates, threshold: float) -> np.ndarray:
    """The task's candidates no slower than `threshold` (any, for the order policies), cheapest first."""
    cand = task.candidates  # ascending: a stable sort keeps equals in node order
    if task.timed:
        cand = cand[task.est[cand] <= threshold]
    return cand[np.argsort(task.price[cand], kind="stable")]
