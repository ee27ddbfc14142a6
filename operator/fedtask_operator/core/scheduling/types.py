"""The scheduler's data types: what a task asks for in a learning period and what it gets (pure)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..kube_types import KubeObject


@dataclass(frozen=True)
class DeviceRequest:
    """One task's demand for the next learning period."""

    task: str  # "namespace/name"
    per_round: int
    requests: dict[str, Any]  # per-device requests, Kubernetes quantities: {"cpu": "500m", "nvidia.com/gpu": 1}
    selector: KubeObject = field(default_factory=dict)  # a LabelSelector: matchLabels / matchExpressions
    tolerations: tuple[KubeObject, ...] = ()
    node_devices: bool = False  # True: hostPath/pvc data, a device is a node and runs one task at a time
    shard_count: int = 0  # builtin data: the number of simulated devices (shards)
    priority: int = 0
    policy: str = "time-fair"  # time-fair | fastest | random | round-robin
    waiting_since: float | None = None  # epoch seconds when the task began to wait (aging)
    participation: dict[str, int] = field(default_factory=dict)  # device -> rounds it trained in
    participation_default: int = 0  # the rounds of every device `participation` does not name (status compaction)
    train_seconds: dict[str, float] = field(default_factory=dict)  # device -> observed train time (EWMA), seconds
    samples: dict[str, int] = field(default_factory=dict)  # device -> sample count, when known
    round: int = 1  # the round being scheduled (seeds `random`, rotates `round-robin`)
    fairness_weight: float | None = None  # time-fair: weight of unfairness in the cost (None: the operator default)
    pool: str = ""  # builtin data: the device pool it shares with tasks naming the same one ("": its own devices)
    ready_since: float | None = None  # epoch seconds since it collects for the next period (collection window)
    replacement: bool = False  # mid-round: devices to replace failed ones (decided at once, no collection window)
    # devices the task already has in its round (a replacement's request: finished or failed, they are not free for
    # it even when their pods are gone); never chosen
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DeviceSlot:
    """One selected device and the node its train pod runs on."""

    device: str  # the node name for node devices; "d007" for simulated shard 7
    node: str
    estimated_seconds: float | None = None


@dataclass
class TaskAssignment:
    devices: list[DeviceSlot] = field(default_factory=list)
    waiting_reason: str | None = None  # set when the task must wait this period, and why
    rejected: bool = False  # the request itself cannot be read (waiting_reason names the field); the others go on
    period: int | None = None  # the learning period (joint decision) this belongs to, when the runtime numbers them
    round_seconds: float = 0.0  # T: the slowest selected device's estimate
    time_scale: float = 1.0  # tau: the median estimate of the task's candidates (objective.py)
    fairness_weight: float = 0.0  # w in force (0 for the policies other than time-fair)
    unfairness: float = 0.0  # U after this period (objective.py)
    jain: float = 1.0  # Jain's index of the task's participation after this period
    solver: str = ""  # how its devices were chosen: independent, exact, local-search or greedy (joint.py)
    optimal: bool = False  # the choice is proved optimal for the period's objective

    @property
    def cost(self) -> float:
        """The task's share of the period's cost: T / tau + w U."""
        return self.round_seconds / self.time_scale + self.fairness_weight * self.unfairness if self.devices else 0.0


@dataclass
class Assignment:
    tasks: dict[str, TaskAssignment] = field(default_factory=dict)  # task key -> its devices
    excluded: Mapping[str, str] = field(default_factory=dict)  # node -> every reason no task got it (read-only)
    period_seconds: float = 0.0  # estimated time of the period (slowest task's slowest device)
    period: int | None = None  # the learning period's number, when the runtime numbers them

    @property
    def cost(self) -> float:
        """The period's cost: the sum of its served tasks' costs (objective.py)."""
        return sum(task.cost for task in self.tasks.values())
