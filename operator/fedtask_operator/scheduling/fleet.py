"""The cluster as the scheduler sees it in one period: nodes, their free resources and who trains where (pure).

Built once per period from `kubectl get nodes/pods -o json` items; everything per task works on its numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..naming import STAGE_LABEL, TASK_LABEL
from ..quantities import MAX_MILLI, QuantityError, parse_resource_list, to_milli
from .estimates import MAX_CPU_CORES, gpu_speed, is_gpu_resource
from .matching import BLOCKING_EFFECTS

TERMINATED_PHASES = ("Succeeded", "Failed")
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
POD_COUNT = "pods"


class FleetError(ValueError):
    """A node or pod object the scheduler cannot read; the message names the object and field."""


@dataclass
class Fleet:
    names: list[str]
    labels: list[dict]
    ready: np.ndarray  # bool per node
    cordoned: np.ndarray  # bool per node (spec.unschedulable)
    taint_group: np.ndarray  # int per node: index into taint_sets; 0 = no blocking taint
    taint_sets: list[tuple]  # distinct tuples of blocking taints (dicts with key, value, effect)
    resources: list[str]  # columns of `free`/`allocatable`
    allocatable: np.ndarray  # int64 milli-units [node, resource]
    free: np.ndarray  # allocatable minus the requests of non-terminated pods
    cpu_speed: np.ndarray  # core-equivalents for CPU-only training
    gpu_speed: np.ndarray  # core-equivalents of the node's GPU (0 without one)
    training: dict[int, set] = field(default_factory=dict)  # node -> task keys with a running train pod there
    index: dict[str, int] = field(default_factory=dict)
    _label_index: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def column(self, resource: str) -> int | None:
        try:
            return self.resources.index(resource)
        except ValueError:
            return None

    def label_values(self, key: str) -> dict[str, np.ndarray]:
        """label value -> indices of the nodes carrying it (built on first use per key)."""
        if key not in self._label_index:
            groups: dict[str, list[int]] = {}
            for i, labels in enumerate(self.labels):
                value = labels.get(key)
                if value is not None:
                    groups.setdefault(str(value), []).append(i)
            self._label_index[key] = {v: np.asarray(ix, dtype=np.int64) for v, ix in groups.items()}
        return self._label_index[key]


def _items(objects, kind: str) -> list[dict]:
    """Accept a list of objects or a `kind: List` dump with `items`."""
    if isinstance(objects, dict):
        objects = objects.get("items")
    if not isinstance(objects, list):
        raise FleetError(f"{kind}: expected a list of objects or a List with items")
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise FleetError(f"{kind}[{i}]: expected an object, got {type(obj).__name__}")
    return objects


def _is_ready(status: dict) -> bool:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _container_requests(container: dict, where: str) -> dict[str, int]:
    resources = container.get("resources") or {}
    limits = parse_resource_list(resources.get("limits"), f"{where}.resources.limits")
    requests = parse_resource_list(resources.get("requests"), f"{where}.resources.requests")
    return {**limits, **requests}  # a resource with only a limit requests its limit, as Kubernetes defaults it


def pod_requests(pod: dict, where: str = "pod") -> dict[str, int]:
    """What a pod requests on its node (milli-units), as kube-scheduler counts it: the sum over containers, at least
    every init container's request (restartable sidecars run alongside), plus the pod overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, int] = {}
    for i, container in enumerate(spec.get("containers") or ()):
        for name, milli in _container_requests(container, f"{where}.spec.containers[{i}]").items():
            total[name] = total.get(name, 0) + milli
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for i, container in enumerate(spec.get("initContainers") or ()):
        requests = _container_requests(container, f"{where}.spec.initContainers[{i}]")
        if container.get("restartPolicy") == "Always":
            for name, milli in requests.items():
                sidecars[name] = sidecars.get(name, 0) + milli
            candidate = sidecars
        else:
            candidate = {n: requests.get(n, 0) + sidecars.get(n, 0) for n in set(requests) | set(sidecars)}
        for name, milli in candidate.items():
            init_peak[name] = max(init_peak.get(name, 0), milli)
    for name, milli in sidecars.items():
        total[name] = total.get(name, 0) + milli
    for name, milli in init_peak.items():
        total[name] = max(total.get(name, 0), milli)
    for name, milli in parse_resource_list(spec.get("overhead"), f"{where}.spec.overhead").items():
        total[name] = total.get(name, 0) + milli
    return total


def _object_name(obj: dict, kind: str, i: int) -> str:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        raise FleetError(f"{kind}[{i}].metadata.name: required")
    return str(name)


def build_fleet(nodes, pods=()) -> Fleet:
    """Precompute everything the scheduler needs from node and pod objects, in one pass over each."""
    nodes = _items(nodes, "nodes")
    pods = _items(pods, "pods") if pods else []
    count = len(nodes)
    names: list[str] = []
    labels: list[dict] = []
    ready = np.zeros(count, dtype=bool)
    cordoned = np.zeros(count, dtype=bool)
    taint_group = np.zeros(count, dtype=np.int64)
    taint_sets: list[tuple] = [()]
    taint_ids: dict = {(): 0}
    allocatables: list[dict] = []
    resources: dict[str, None] = {}
    gpu_speeds = np.zeros(count)
    index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        name = _object_name(node, "nodes", i)
        if name in index:
            raise FleetError(f"nodes[{i}].metadata.name: duplicate node {name!r}")
        index[name] = i
        names.append(name)
        node_labels = (node.get("metadata") or {}).get("labels") or {}
        labels.append(node_labels)
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        ready[i] = _is_ready(status)
        cordoned[i] = bool(spec.get("unschedulable"))
        taints = spec.get("taints")
        if taints:
            blocking = tuple(
                (t.get("key", ""), t.get("value") or "", t.get("effect")) for t in taints
                if t.get("effect") in BLOCKING_EFFECTS and not (cordoned[i] and t.get("key") == UNSCHEDULABLE_TAINT["key"])
            )
            if blocking:
                taint_group[i] = taint_ids.setdefault(blocking, len(taint_ids))
                if taint_group[i] == len(taint_sets):
                    taint_sets.append(tuple({"key": k, "value": v, "effect": e} for k, v, e in blocking))
        try:
            allocatable = parse_resource_list(status.get("allocatable") or status.get("capacity"),
                                              f"node {name}: status.allocatable")
        except QuantityError as error:
            raise FleetError(str(error)) from None
        allocatables.append(allocatable)
        for resource in allocatable:
            resources[resource] = None
        if any(is_gpu_resource(r) and m > 0 for r, m in allocatable.items()):
            gpu_speeds[i] = gpu_speed(node_labels)
    columns = list(resources)
    for standard in ("cpu", "memory"):
        if standard not in resources:
            columns.append(standard)
    column_of = {r: c for c, r in enumerate(columns)}
    alloc = np.zeros((count, len(columns)), dtype=np.int64)
    pod_column = column_of.get(POD_COUNT)
    for i, allocatable in enumerate(allocatables):
        row = alloc[i]
        for resource, milli in allocatable.items():
            row[column_of[resource]] = milli
        if pod_column is not None and POD_COUNT not in allocatable:
            row[pod_column] = MAX_MILLI  # no pod limit reported: do not invent one
    used = np.zeros_like(alloc)
    training: dict[int, set] = {}
    for i, pod in enumerate(pods):
        spec = pod.get("spec") or {}
        node_index = index.get(spec.get("nodeName") or "")
        if node_index is None or (pod.get("status") or {}).get("phase") in TERMINATED_PHASES:
            continue
        metadata = pod.get("metadata") or {}
        where = f"pod {metadata.get('namespace', '')}/{metadata.get('name', i)}"
        try:
            requests = pod_requests(pod, where)
        except QuantityError as error:
            raise FleetError(str(error)) from None
        row = used[node_index]
        for resource, milli in requests.items():
            column = column_of.get(resource)
            if column is not None:
                row[column] += milli
        if pod_column is not None:
            row[pod_column] += 1000
        pod_labels = metadata.get("labels") or {}
        if pod_labels.get(STAGE_LABEL) == "train" and pod_labels.get(TASK_LABEL):
            task = f"{metadata.get('namespace') or 'default'}/{pod_labels[TASK_LABEL]}"
            training.setdefault(node_index, set()).add(task)
    free = alloc - used
    cpu = alloc[:, column_of["cpu"]] / 1000.0
    return Fleet(
        names=names, labels=labels, ready=ready, cordoned=cordoned, taint_group=taint_group, taint_sets=taint_sets,
        resources=columns, allocatable=alloc, free=free, cpu_speed=np.clip(cpu, 0.0, MAX_CPU_CORES),
        gpu_speed=gpu_speeds, training=training, index=index,
    )
