"""The operator's memory of every pod in the cluster, kept small: resource accounting needs, per pod that still holds
resources on a node, the node, the summed requests and (for fedtask's own pods) the fedtask.io labels.

A watched pod becomes a `PodSummary` tuple (`summarize`); a pod that holds nothing (finished, or on no node yet and
pinned to none) is not kept at all. Requests are summed at once the way kube-scheduler counts them
(`scheduling.fleet.pod_requests`: containers, init containers, sidecars, overhead) and written back as one container
whose requests are milli-quantities; pods of the same shape share that one container object. `expand` gives the
scheduler the pod dict it reads (`fleet.build_fleet`), only when a learning period assigns devices.

Without this, each pod's containers (image, command, env, mounts) were deep-copied into the index: memory grew with
the cluster's foreign pods, not with fedtask's work (issue 13; `benchmarks/scale.py` measures it).
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from fedtask_operator.core.naming import pinned_node
from fedtask_operator.core.phases import POD_FINISHED_PHASES
from fedtask_operator.core.quantities import QuantityError
from fedtask_operator.core.scheduling.fleet import pod_requests

FEDTASK_LABEL_PREFIX = "fedtask.io/"
_SHAPES_MAX = 4096  # distinct request shapes shared; past this, each pod keeps its own (still summed) container
_shapes: dict[tuple, tuple[dict, ...]] = {}


class PodSummary(NamedTuple):
    name: str
    namespace: str
    node: str | None
    phase: str | None
    containers: tuple[dict, ...]  # one container with the summed requests (shared), or the pod's own when unparsable
    labels: dict | None  # the fedtask.io/ labels of fedtask's pods, None for any other pod


def _shared_containers(totals: dict[str, int]) -> tuple[dict, ...]:
    key = tuple(sorted(totals.items()))
    shared = _shapes.get(key)
    if shared is None:
        shared = ({"resources": {"requests": {name: f"{milli}m" for name, milli in key}}},)
        if len(_shapes) < _SHAPES_MAX:
            _shapes[key] = shared
    return shared


def summarize(body, spec=None, status=None) -> PodSummary | None:
    """The summary of one pod (a kopf body or a plain dict), or None when it holds no resources anywhere."""
    spec = spec if spec is not None else body.get("spec") or {}
    status = status if status is not None else body.get("status") or {}
    phase = status.get("phase")
    if phase in POD_FINISHED_PHASES:
        return None
    metadata = body.get("metadata") or {}
    labels = {key: value for key, value in (metadata.get("labels") or {}).items()
              if key.startswith(FEDTASK_LABEL_PREFIX)} or None
    node = pinned_node({"spec": spec})
    if node is None and labels is None:
        return None  # not on a node, not pinned to one, not ours: it holds nothing the scheduler counts
    try:
        containers = _shared_containers(pod_requests({"spec": spec}))
    except (QuantityError, TypeError, AttributeError, ValueError):
        # unparsable requests: keep the pod's own (the scheduler reports the error with the pod's name)
        containers = tuple({"resources": dict(c.get("resources") or {})} for c in spec.get("containers") or ())
    return PodSummary(name=sys.intern(str(metadata.get("name") or "")),
                      namespace=sys.intern(str(metadata.get("namespace") or "")),
                      node=sys.intern(node) if node else None, phase=sys.intern(phase) if phase else None,
                      containers=containers, labels=labels)


def expand(summary: PodSummary) -> dict:
    """The pod dict the scheduler reads (metadata, spec.nodeName and containers, status.phase)."""
    return {"metadata": {"name": summary.name, "namespace": summary.namespace, "labels": summary.labels or {}},
            "spec": {"nodeName": summary.node, "containers": list(summary.containers)},
            "status": {"phase": summary.phase}}


class PodsView:
    """Every summarized pod of a kopf index (or a list), expanded one at a time when iterated: building a view costs
    nothing, so handlers that never schedule never touch the pods."""

    def __init__(self, source):
        self._source = source

    def _summaries(self) -> Iterator[PodSummary | dict]:  # a plain pod dict passes through as it is
        source = self._source
        if hasattr(source, "values") and not isinstance(source, list):  # a kopf index: key -> store of values
            for store in source.values():
                yield from store
        else:
            yield from source

    def __iter__(self) -> Iterator[dict]:
        return (expand(item) if isinstance(item, PodSummary) else item
                for item in self._summaries() if item is not None)


def summarize_all(pods: Iterable[dict]) -> list[PodSummary]:
    return [summary for summary in map(summarize, pods) if summary is not None]
