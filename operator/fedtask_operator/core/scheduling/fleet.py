"""The cluster as the scheduler sees it in one period: nodes, their free resources and who trains where (pure).

Built once per period from `kubectl get nodes/pods -o json` items; everything per task works on its numpy arrays.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from ..kube_types import KubeObject
from ..naming import (
    DEVICE_LABEL,
    POOL_LABEL,
    STAGE_LABEL,
    STAGE_TRAIN,
    TASK_LABEL,
    device_pool_key,
    pinned_node,
    shard_index,
)
from ..phases import POD_FINISHED_PHASES
from ..quantities import MAX_MILLI, QuantityError, parse_resource_list
from .estimates import MAX_CPU_CORES, gpu_speed, is_gpu_resource
from .matching import BLOCKING_EFFECTS

UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
POD_COUNT = "pods"

KubeObjects: TypeAlias = Sequence[KubeObject] | KubeObject
"""Node or pod objects: a list of them, or a `kind: List` dump with `items`."""
PodObjects: TypeAlias = Iterable[KubeObject] | KubeObject
"""Pods as KubeObjects, or any other iterable of them, read once: the operator streams them from its pod watch
(100,000 pods expanded into one list cost ~88 MB per scheduling pass)."""


class FleetError(ValueError):
    """A node or pod object the scheduler cannot read; the message names the object and field."""


@dataclass
class Fleet:
    names: list[str]
    labels: list[dict[str, str]]
    ready: np.ndarray  # bool per node
    cordoned: np.ndarray  # bool per node (spec.unschedulable)
    taint_group: np.ndarray  # int per node: index into taint_sets; 0 = no blocking taint
    taint_sets: list[tuple[KubeObject, ...]]  # distinct tuples of blocking taints (dicts with key, value, effect)
    resources: list[str]  # columns of `free`/`allocatable`
    allocatable: np.ndarray  # int64 milli-units [node, resource]
    free: np.ndarray  # allocatable minus the requests of non-terminated pods
    cpu_speed: np.ndarray  # core-equivalents for CPU-only training
    gpu_speed: np.ndarray  # core-equivalents of the node's GPU (0 without one)
    training: dict[int, set[str]] = field(default_factory=dict)  # node -> task keys with a running train pod there
    index: dict[str, int] = field(default_factory=dict)
    pool_busy: dict[str, dict[int, str]] = field(default_factory=dict)  # pool -> shard -> task training it
    _label_index: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

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


def _items(objects: object, kind: str) -> list[KubeObject]:
    """Accept a list of objects or a `kind: List` dump with `items`."""
    if isinstance(objects, dict):
        objects = objects.get("items")
    if not isinstance(objects, list):
        raise FleetError(f"{kind}: expected a list of objects or a List with items")
    return objects


def _pod_items(pods: object) -> Iterable[KubeObject]:
    """Pods as `_items` accepts them, or any other iterable of pods (not a string), read once as it comes."""
    if isinstance(pods, (dict, str, bytes)) or not isinstance(pods, Iterable):
        return _items(pods, "pods")
    return pods


def _container_requests(container: KubeObject, where: str) -> dict[str, int]:
    resources = container.get("resources") or {}
    limits = parse_resource_list(resources.get("limits"), f"{where}.resources.limits")
    requests = parse_resource_list(resources.get("requests"), f"{where}.resources.requests")
    return {**limits, **requests}  # a resource with only a limit requests its limit, as Kubernetes defaults it


def pod_requests(pod: KubeObject, where: str = "pod") -> dict[str, int]:
    """What a pod requests on its node (milli-units), as kube-scheduler counts it: the sum over containers, at least
    every init container's request (restartable sidecars run alongside), plus the pod overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, int] = {}
    for i, container in enumerate(spec.get("containers") or ()):
        for name, milli in _container_requests(container, f"{where}: spec.containers[{i}]").items():
            total[name] = total.get(name, 0) + milli
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for i, container in enumerate(spec.get("initContainers") or ()):
        requests = _container_requests(container, f"{where}: spec.initContainers[{i}]")
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
    for name, milli in parse_resource_list(spec.get("overhead"), f"{where}: spec.overhead").items():
        total[name] = total.get(name, 0) + milli
    return total


def _hashable(resources: object) -> tuple[tuple[Any, Any], ...] | None:
    """A cache key for a ResourceList, None when it is not a plain mapping of scalars."""
    if not isinstance(resources, dict):
        return None
    try:
        key = tuple(resources.items())
        hash(key)
    except TypeError:
        return None
    return key


def _check_node(node: object, i: int) -> tuple[KubeObject, str, KubeObject]:
    if not isinstance(node, dict):
        raise FleetError(f"nodes[{i}]: expected an object, got {type(node).__name__}")
    metadata = node.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not name or not isinstance(name, str):
        raise FleetError(f"nodes[{i}].metadata.name: required")
    status = node.get("status") or {}
    if not isinstance(status, dict):
        raise FleetError(f"nodes[{i}].status: expected an object")
    return metadata, name, status


@dataclass(frozen=True, eq=False)
class _NodeArrays:
    """What the node objects say, one row per node."""

    names: list[str]
    labels: list[dict[str, str]]
    index: dict[str, int]
    ready: np.ndarray
    cordoned: np.ndarray
    taint_group: np.ndarray
    taint_sets: list[tuple[KubeObject, ...]]
    resources: list[str]
    allocatable: np.ndarray


@dataclass(frozen=True)
class _PodUsage:
    """What the pods bound (or pinned) to nodes take there."""

    requests: dict[int, list[int]]  # node -> milli-units per resource column, summed over its pods
    training: dict[int, set[str]]  # node -> task keys with a running train pod there
    pool_busy: dict[str, dict[int, str]]  # device pool -> simulated device (shard) -> the task training on it


def build_fleet(nodes: KubeObjects, pods: PodObjects = ()) -> Fleet:
    """Precompute everything the scheduler needs from node and pod objects, in one pass over each.

    Fleets repeat themselves (a few node sizes, a few pod shapes), so parsed resource lists are cached by content."""
    arrays = _node_arrays(_items(nodes, "nodes"))
    usage = _pod_usage(_pod_items(pods), arrays.index, arrays.resources)
    return _assemble(arrays, usage)


def _node_arrays(nodes: list[KubeObject]) -> _NodeArrays:
    names: list[str] = []
    labels: list[dict[str, str]] = []
    ready: list[bool] = []
    cordoned: list[bool] = []
    taint_of: dict[int, int] = {}  # node -> taint set id, for tainted nodes only
    taint_sets: list[tuple[KubeObject, ...]] = [()]
    taint_ids: dict[tuple[tuple[str, str, str], ...], int] = {(): 0}
    shapes: dict[tuple[tuple[Any, Any], ...], int] = {}  # allocatable content -> shape id
    shape_rows: list[dict[str, int]] = []
    shape_of: list[int] = []
    index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        try:
            metadata = node["metadata"]
            name = metadata["name"]
            status = node["status"]
        except (KeyError, TypeError):
            metadata, name, status = _check_node(node, i)
        if not isinstance(name, str) or not name or name in index:
            _check_node(node, i)
            raise FleetError(f"nodes[{i}].metadata.name: duplicate node {name!r}")
        index[name] = i
        names.append(name)
        labels.append(metadata.get("labels") or {})
        is_ready = False
        for condition in status.get("conditions") or ():
            if condition.get("type") == "Ready":
                is_ready = condition.get("status") == "True"
                break
        ready.append(is_ready)
        spec = node.get("spec")
        is_cordoned = bool(spec and spec.get("unschedulable"))
        cordoned.append(is_cordoned)
        taints = spec and spec.get("taints")
        if taints:
            blocking = tuple(
                (t.get("key", ""), t.get("value") or "", t.get("effect")) for t in taints
                if t.get("effect") in BLOCKING_EFFECTS
                and not (is_cordoned and t.get("key") == UNSCHEDULABLE_TAINT["key"])
            )
            if blocking:
                group = taint_of[i] = taint_ids.setdefault(blocking, len(taint_ids))
                if group == len(taint_sets):
                    taint_sets.append(tuple({"key": k, "value": v, "effect": e} for k, v, e in blocking))
        raw = status.get("allocatable") or status.get("capacity")
        try:
            shape = shapes.get(tuple(raw.items()))
        except (AttributeError, TypeError):
            shape = None
        if shape is None:
            try:
                parsed = parse_resource_list(raw, f"node {name}: status.allocatable")
            except QuantityError as error:
                raise FleetError(str(error)) from None
            shape = len(shape_rows)
            shape_rows.append(parsed)
            key = _hashable(raw)
            if key is not None:
                shapes[key] = shape
        shape_of.append(shape)
    taint_group = np.zeros(len(nodes), dtype=np.int64)
    if taint_of:
        taint_group[list(taint_of)] = list(taint_of.values())
    columns, shape_matrix = _shape_matrix(shape_rows)
    return _NodeArrays(names=names, labels=labels, index=index, ready=np.array(ready, dtype=bool),
                       cordoned=np.array(cordoned, dtype=bool), taint_group=taint_group, taint_sets=taint_sets,
                       resources=columns, allocatable=shape_matrix[shape_of])


def _shape_matrix(shape_rows: list[dict[str, int]]) -> tuple[list[str], np.ndarray]:
    """The resource columns (every resource a node reports, plus cpu and memory) and one row per node shape."""
    columns = list(dict.fromkeys(r for row in shape_rows for r in row))
    for standard in ("cpu", "memory"):
        if standard not in columns:
            columns.append(standard)
    column_of = {r: c for c, r in enumerate(columns)}
    pod_column = column_of.get(POD_COUNT)
    matrix = np.zeros((max(len(shape_rows), 1), len(columns)), dtype=np.int64)
    for shape, parsed in enumerate(shape_rows):
        for resource, milli in parsed.items():
            matrix[shape, column_of[resource]] = milli
        if pod_column is not None and POD_COUNT not in parsed:
            matrix[shape, pod_column] = MAX_MILLI  # no pod limit reported: do not invent one
    return columns, matrix


def _pod_usage(pods: Iterable[KubeObject], index: dict[str, int], resources: list[str]) -> _PodUsage:
    column_of = {r: c for c, r in enumerate(resources)}
    pod_column = column_of.get(POD_COUNT)
    used_rows: dict[int, list[int]] = {}
    training: dict[int, set[str]] = {}
    pool_busy: dict[str, dict[int, str]] = {}
    pod_shapes: dict[tuple[tuple[Any, ...], tuple[Any, ...]], list[tuple[int, int]]] = {}
    width = len(resources)
    for i, pod in enumerate(pods):
        try:
            spec = pod["spec"]
            node = pinned_node(pod)
            node_index = index.get(node) if node is not None else None  # an unpinned pod is on no node
        except (KeyError, TypeError, AttributeError):
            if not isinstance(pod, dict):
                raise FleetError(f"pods[{i}]: expected an object, got {type(pod).__name__}") from None
            continue  # a pod without a spec is not bound anywhere
        if (pod.get("status") or {}).get("phase") in POD_FINISHED_PHASES:
            continue
        metadata = pod.get("metadata") or {}
        pod_labels = metadata.get("labels")
        if pod_labels and pod_labels.get(STAGE_LABEL) == STAGE_TRAIN and pod_labels.get(TASK_LABEL):
            shard = shard_index(str(pod_labels.get(DEVICE_LABEL) or ""))
            if shard is not None:  # a simulated device of a pool trains until its pod ends, wherever that runs
                task = f"{metadata.get('namespace') or 'default'}/{pod_labels[TASK_LABEL]}"
                pool_busy.setdefault(device_pool_key(task, str(pod_labels.get(POOL_LABEL) or "")), {})[shard] = task
        if node_index is None:
            continue
        requests = key = None
        containers: Sequence[KubeObject] = spec.get("containers") or ()
        if len(containers) == 1 and not spec.get("initContainers") and not spec.get("overhead"):
            container_resources = containers[0].get("resources") or {}
            try:
                key = (tuple((container_resources.get("requests") or {}).items()),
                       tuple((container_resources.get("limits") or {}).items()))
                requests = pod_shapes.get(key)
            except (TypeError, AttributeError):
                key = None
        if requests is None:
            where = f"pod {metadata.get('namespace', '')}/{metadata.get('name', i)}"
            try:
                requests = [(column_of[r], m) for r, m in pod_requests(pod, where).items() if r in column_of]
            except QuantityError as error:
                raise FleetError(str(error)) from None
            if pod_column is not None:
                requests.append((pod_column, 1000))
            if key is not None:
                pod_shapes[key] = requests
        row = used_rows.get(node_index)
        if row is None:
            row = used_rows[node_index] = [0] * width
        for column, milli in requests:
            row[column] += milli
        if pod_labels and pod_labels.get(STAGE_LABEL) == STAGE_TRAIN and pod_labels.get(TASK_LABEL):
            task = f"{metadata.get('namespace') or 'default'}/{pod_labels[TASK_LABEL]}"
            training.setdefault(node_index, set()).add(task)
    return _PodUsage(requests=used_rows, training=training, pool_busy=pool_busy)


def _assemble(arrays: _NodeArrays, usage: _PodUsage) -> Fleet:
    alloc = arrays.allocatable
    free = alloc.copy()
    if usage.requests:
        busy = np.fromiter(usage.requests, dtype=np.int64, count=len(usage.requests))
        free[busy] -= np.array(list(usage.requests.values()), dtype=np.int64)
    gpu_columns = [c for c, r in enumerate(arrays.resources) if is_gpu_resource(r)]
    gpu_speeds = np.zeros(len(arrays.names))
    if gpu_columns:
        for i in np.flatnonzero((alloc[:, gpu_columns] > 0).any(axis=1)):
            gpu_speeds[i] = gpu_speed(arrays.labels[i])
    cpu = alloc[:, arrays.resources.index("cpu")] / 1000.0
    return Fleet(
        names=arrays.names, labels=arrays.labels, ready=arrays.ready, cordoned=arrays.cordoned,
        taint_group=arrays.taint_group, taint_sets=arrays.taint_sets, resources=arrays.resources, allocatable=alloc,
        free=free, cpu_speed=np.clip(cpu, 0.0, MAX_CPU_CORES), gpu_speed=gpu_speeds, training=usage.training,
        index=arrays.index, pool_busy=usage.pool_busy,
    )
