"""One learning period as the selection phases share it (pure): what each request resolves to on the fleet, the
per-period mask caches, and the resources and nodes that tasks served earlier in the period have booked."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..kube_types import KubeObject
from ..quantities import QuantityError, parse_resource_list
from .estimates import is_gpu_resource
from .fleet import POD_COUNT, UNSCHEDULABLE_TAINT, Fleet
from .matching import check_selector, check_tolerations, selector_requirements, tolerates, untolerated_taints
from .policies import POLICIES
from .types import DeviceRequest, DeviceSlot


@dataclass(frozen=True, eq=False)
class TaskInput:
    """What one task's request resolves to on this period's fleet; fixed for the whole period."""

    request: DeviceRequest
    key: str
    name: str
    requests: tuple[tuple[str, int | None, int], ...]  # ((resource, column or None, milli), ...)
    gpu: bool
    matched: np.ndarray  # bool per node: the selector matches
    schedulable: np.ndarray  # bool per node: Ready and not cordoned (unless tolerated)
    tolerated: np.ndarray  # bool per node: every blocking taint tolerated


@dataclass(frozen=True, eq=False)
class TaskCheck:
    """The free resources a task was checked against in its phase, and what that check found."""

    task: TaskInput
    free: np.ndarray
    fits: np.ndarray  # bool per node: the requests fit into `free`
    taken: np.ndarray | None = None  # node tasks: bool per node, another task trains there
    taken_by: Mapping[int, str] = field(default_factory=dict)  # node -> the task booked there earlier this period


@dataclass(frozen=True)
class TaskOutcome:
    """What one task got this period: its devices, or why it waits; and the check explanations quote."""

    check: TaskCheck
    slots: list[DeviceSlot] = field(default_factory=list)
    waiting_reason: str | None = None
    solver: str = ""  # how the devices were chosen (joint.py: independent, exact, local-search; greedy; order)
    optimal: bool = False  # proved optimal for the period's objective
    time_scale: float = 1.0  # objective.py: tau, w, and U and Jain's index after the period
    weight: float = 0.0
    unfairness: float = 0.0
    jain: float = 1.0


class Period:
    """Per-period caches shared by all tasks (selector and toleration masks) and what the tasks served so far booked:
    the free resources left, the owner of each node device, and the train pods placed on each node."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.free = fleet.free
        self._selector_cache: dict[tuple[tuple[str, str, tuple[str, ...]], ...], np.ndarray] = {}
        self._toleration_cache: dict[str, tuple[np.ndarray, bool]] = {}
        self._has_key_cache: dict[str, np.ndarray] = {}
        self._speed_cache: dict[bool, np.ndarray] = {}
        n = len(fleet)
        self.training_any = np.zeros(n, dtype=bool)
        self.training_only: dict[str, list[int]] = {}  # task -> nodes where only it trains
        for node, owners in fleet.training.items():
            self.training_any[node] = True
            if len(owners) == 1:
                self.training_only.setdefault(next(iter(owners)), []).append(node)
        self.node_owner: dict[int, str] = {}  # node -> the first task booked on it this period (any kind)
        self.booked = np.zeros(n, dtype=bool)  # nodes a train pod was placed on this period
        self.period_load = np.zeros(n)  # train pods placed on each node this period, by any task
        self.pod_column = fleet.column(POD_COUNT)

    # --- masks -----------------------------------------------------------------------------------------------
    def selector_mask(self, selector: KubeObject | None) -> np.ndarray:
        requirements = tuple(selector_requirements(selector))
        if requirements not in self._selector_cache:
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
            self._selector_cache[requirements] = mask
        return self._selector_cache[requirements]

    def has_key(self, key: str) -> np.ndarray:
        if key not in self._has_key_cache:
            mask = np.zeros(len(self.fleet), dtype=bool)
            for indices in self.fleet.label_values(key).values():
                mask[indices] = True
            self._has_key_cache[key] = mask
        return self._has_key_cache[key]

    def toleration_masks(self, tolerations: Sequence[KubeObject]) -> tuple[np.ndarray, bool]:
        """(nodes whose blocking taints are all tolerated, whether cordoned nodes are tolerated)."""
        key = repr(sorted(sorted(t.items()) for t in tolerations))
        if key not in self._toleration_cache:
            fleet = self.fleet
            per_group = np.array([not untolerated_taints(list(taints), tolerations) for taints in fleet.taint_sets])
            tolerates_cordon = any(tolerates(t, UNSCHEDULABLE_TAINT) for t in tolerations)
            self._toleration_cache[key] = (per_group[fleet.taint_group], tolerates_cordon)
        return self._toleration_cache[key]

    # --- per task ----------------------------------------------------------------------------------------------
    def resolve(self, request: DeviceRequest) -> TaskInput:
        """Validate a request and resolve it on the fleet; raises ValueError naming the task and the field."""
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
        return TaskInput(
            request=request, key=request.task, name=request.task.rsplit("/", 1)[-1], requests=tuple(resources),
            gpu=any(is_gpu_resource(name) for name, _, _ in resources),
            matched=self.selector_mask(request.selector), schedulable=schedulable, tolerated=tolerated,
        )

    def check(self, task: TaskInput, taken: np.ndarray | None = None) -> TaskCheck:
        """The task checked against the resources free now."""
        return TaskCheck(task=task, free=self.free, fits=self.fit_mask(task, self.free), taken=taken,
                         taken_by=self.node_owner)  # only grows, by setdefault: what `taken` saw stays true

    def fit_mask(self, task: TaskInput, free: np.ndarray) -> np.ndarray:
        fits = np.ones(len(self.fleet), dtype=bool)
        for _, column, amount in task.requests:
            if column is None:
                fits[:] = False
            else:
                fits &= free[:, column] >= amount
        return fits

    def speed(self, task: TaskInput) -> np.ndarray:
        """Per node: the task's training speed (GPU tasks: the GPU's where there is one); read-only, computed once
        per period for each kind."""
        if task.gpu not in self._speed_cache:
            fleet = self.fleet
            speed = np.where(fleet.gpu_speed > 0, fleet.gpu_speed, fleet.cpu_speed) if task.gpu else fleet.cpu_speed
            speed = np.maximum(speed, 1e-3)
            speed.flags.writeable = False
            self._speed_cache[task.gpu] = speed
        return self._speed_cache[task.gpu]

    # --- bookings ----------------------------------------------------------------------------------------------
    def book_node_devices(self, chosen: list[tuple[TaskInput, list[int]]]) -> None:
        """Node-device tasks take their nodes: each node gets one train pod, and its requests leave the free
        resources (a new array: the checks made so far keep quoting what they saw)."""
        if not chosen:
            return
        free = self.free.copy()
        for task, nodes in chosen:
            for node in nodes:
                self.node_owner.setdefault(node, task.key)
                self.booked[node] = True
                self.period_load[node] += 1
                for _, column, amount in task.requests:
                    free[node, column] -= amount
        self.free = free

    def book_shards(self, task: str, rows: dict[int, np.ndarray], pods: dict[int, int]) -> None:
        """A shard task's placement: the free resources left on the nodes it used and its train pods per node (a
        node holding one is then taken for the node-device tasks placed after it: a node device trains one task)."""
        free = self.free.copy()
        for node, row in rows.items():
            free[node] = row
        self.free = free
        for node, placed in pods.items():
            self.period_load[node] += placed
            if placed:
                self.node_owner.setdefault(node, task)
                self.booked[node] = True
