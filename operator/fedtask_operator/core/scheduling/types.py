"""The scheduler's data types: what a task asks for in a learning period and what it gets (pure)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceRequest:
    """One task's demand for the next learning period."""

    task: str  # "namespace/name"
    per_round: int
    requests: dict  # per-device resource requests, Kubernetes quantities: {"cpu": "500m", "nvidia.com/gpu": 1}
    selector: dict = field(default_factory=dict)  # a LabelSelector: matchLabels / matchExpressions
    tolerations: tuple = ()
    node_devices: bool = False  # True: hostPath/pvc data, a device is a node and runs one task at a time
    shard_count: int = 0  # builtin data: the number of simulated devices (shards)
    priority: int = 0
    policy: str = "time-fair"  # time-fair | fastest | random | round-robin
    waiting_since: float | None = None  # epoch seconds when the task began to wait (aging)
    participation: dict = field(default_factory=dict)  # device -> rounds it trained in
    train_seconds: dict = field(default_factory=dict)  # device -> observed train time (EWMA), seconds
    samples: dict = field(default_factory=dict)  # device -> sample count, when known
    round: int = 1  # the round being scheduled (seeds `random`, rotates `round-robin`)
    fairness_bound: float | None = None  # time-fair: rounds a device may fall behind the mean (None: the default, 2)
    fairness_share: float | None = None  # ... or this share of the mean when larger (None: the default, 0.5)


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


@dataclass
class Assignment:
    tasks: dict[str, TaskAssignment] = field(default_factory=dict)  # task key -> its devices
    excluded: dict[str, str] = field(default_factory=dict)  # node -> every reason no task got it
    period_seconds: float = 0.0  # estimated time cost of the period (slowest task's slowest device)
