"""Deterministic names: pod names, labels and object keys (pure; see docs/internals.md).

The same task, round, device and attempt always give the same pod name and the same object key, so every step can be
retried and every crash resumed without losing or repeating work.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedtask_operator.core.kube_types import KubeObject

if TYPE_CHECKING:  # pods and spec import this module
    from fedtask_operator.core.pods import RuntimeConfig
    from fedtask_operator.core.spec import FederatedTask

MAX_NAME_LENGTH = 63  # pod names double as hostnames: keep them DNS labels' length
HASH_LENGTH = 8

TASK_LABEL = "fedtask.io/task"
ROUND_LABEL = "fedtask.io/round"
STAGE_LABEL = "fedtask.io/stage"
DEVICE_LABEL = "fedtask.io/device"
POOL_LABEL = "fedtask.io/device-pool"  # train pods of builtin tasks that share a device pool (spec.devices.pool)
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
HOSTNAME_LABEL = "kubernetes.io/hostname"  # train pods are pinned to their node by required affinity on it
MANAGED_BY = "fedtask"

STAGE_INIT = "init"
STAGE_TRAIN = "train"
STAGE_AGGREGATE = "aggregate"
STAGE_ADJUST = "adjust"
STAGE_PUBLISH = "publish"
STAGES = (STAGE_INIT, STAGE_TRAIN, STAGE_AGGREGATE, STAGE_ADJUST, STAGE_PUBLISH)

MODEL_FILENAME = "model.safetensors"


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cut_name(name: str, limit: int = MAX_NAME_LENGTH) -> str:
    """`name` if it fits, else its head and a short hash of the whole (still unique, still deterministic)."""
    if len(name) <= limit:
        return name
    head = name[: limit - HASH_LENGTH - 1].rstrip("-.")
    return f"{head}-{short_hash(name)}"


def dns_part(text: str) -> str:
    """A device or node name as it may appear inside a pod name: lower case, [a-z0-9.-] only."""
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", str(text).lower()).strip("-.")
    # A DNS label between dots must start and end alphanumeric: any run of dots and dashes holding a dot becomes one.
    cleaned = re.sub(r"-*\.[-.]*", ".", cleaned)
    return cleaned or "x"


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")
    return cut_name(cleaned).strip("-._")


def _retry(attempt: int) -> str:
    return f"-a{attempt}" if attempt >= 1 else ""


def round_tag(round_: int) -> str:
    return f"r{round_:04d}"


def init_pod_name(task_name: str, attempt: int = 0) -> str:
    return cut_name(f"{task_name}-init{_retry(attempt)}")


def train_pod_name(task_name: str, round_: int, device: str, attempt: int = 0) -> str:
    return cut_name(f"{task_name}-{round_tag(round_)}-train-{dns_part(device)}{_retry(attempt)}")


def aggregate_pod_name(task_name: str, round_: int, attempt: int = 0) -> str:
    return cut_name(f"{task_name}-{round_tag(round_)}-aggregate{_retry(attempt)}")


def adjust_pod_name(task_name: str, round_: int, attempt: int = 0) -> str:
    return cut_name(f"{task_name}-{round_tag(round_)}-adjust{_retry(attempt)}")


def publish_pod_name(task_name: str, node: str, attempt: int = 0) -> str:
    return cut_name(f"{task_name}-publish-{dns_part(node)}{_retry(attempt)}")


def shard_device_id(index: int) -> str:
    """The id of simulated device (shard) `index` (0-based): d000, d001, ..."""
    return f"d{index:03d}"


def shard_index(device: str) -> int | None:
    """The shard index of a simulated device id, None for a node device."""
    match = re.fullmatch(r"d(\d{3,})", device)
    return int(match.group(1)) if match else None


def device_pool_key(task_key: str, pool: str) -> str:
    """The scheduler's key of a builtin task's simulated-device pool: `namespace/pool` for a named pool (shared by
    the namespace's tasks naming it), `namespace/task#own` for the task's own devices."""
    namespace = task_key.split("/", 1)[0]
    return f"{namespace}/{pool}" if pool else f"{task_key}#own"


def pod_labels(task_name: str, stage: str, round_: int | None = None, device: str | None = None) -> dict[str, str]:
    labels = {MANAGED_BY_LABEL: MANAGED_BY, TASK_LABEL: label_value(task_name), STAGE_LABEL: stage}
    if round_ is not None:
        labels[ROUND_LABEL] = str(round_)
    if device is not None:
        labels[DEVICE_LABEL] = label_value(device)
    return labels


def pinned_node(pod: KubeObject) -> str | None:
    """The one node a pod may run on: spec.nodeName once bound; before that, a required node affinity whose only
    term requires kubernetes.io/hostname In one node (the form pods.py writes), or a nodeSelector on that label."""
    spec = pod.get("spec") or {}
    node_name: str | None = spec.get("nodeName")
    if node_name:
        return node_name
    affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms: Sequence[KubeObject] = required.get("nodeSelectorTerms") or ()
    if len(terms) == 1:  # terms are alternatives: with several, the pod may run on any node one of them allows
        for expression in terms[0].get("matchExpressions") or ():
            values: Sequence[str] = expression.get("values") or ()
            if expression.get("key") == HOSTNAME_LABEL and expression.get("operator") == "In" and len(values) == 1:
                return values[0]
    selected: str | None = (spec.get("nodeSelector") or {}).get(HOSTNAME_LABEL)
    return selected


# --------------------------------------------------------------------------------------------------------------------
# Object keys: B = <storeBase>/<namespace>/<task>/<uid>


def split_s3_uri(uri: str) -> tuple[str, str]:
    """("bucket", "prefix/without/slashes") of s3://bucket/prefix."""
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def store_root(task: FederatedTask, config: RuntimeConfig) -> str:
    """The store base the runtime configures, with the task's own bucket/prefix applied in a cluster.

    A local runtime (`file://` base) always uses its own folder: the task's storage settings name cluster storage.
    """
    base = str(config.store_base_uri).rstrip("/")
    if not base.startswith("s3://"):
        return base
    storage = task.spec.storage
    bucket, prefix = split_s3_uri(base)
    bucket = storage.bucket or bucket
    prefix = storage.prefix.strip("/") if storage.prefix else prefix
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def store_base(task: FederatedTask, config: RuntimeConfig) -> str:
    """B = <storeBase>/<namespace>/<task>/<uid>: every object of one task (one incarnation, by uid)."""
    parts = [store_root(task, config), task.namespace, task.name]
    if task.uid:
        parts.append(task.uid)
    return "/".join(parts)


def round_prefix(base: str, round_: int) -> str:
    return f"{base}/round-{round_:04d}"


def global_uri(base: str, round_: int) -> str:
    """The global model after round N (round 0: the init output, the input of round 1)."""
    return f"{round_prefix(base, round_)}/global.safetensors"


def updates_prefix(base: str, round_: int) -> str:
    return f"{round_prefix(base, round_)}/updates/"


def update_uri(base: str, round_: int, device: str) -> str:
    return f"{updates_prefix(base, round_)}{dns_part(device)}.safetensors"


def aggregate_uri(base: str, round_: int) -> str:
    return f"{round_prefix(base, round_)}/aggregate.safetensors"


def server_state_uri(base: str, round_: int) -> str:
    return f"{round_prefix(base, round_)}/server-state.safetensors"


def published_model_path(host_dir: str, namespace: str, task_name: str) -> str:
    """Where a publish pod writes the final model inside `host_dir` (the mounted publish.hostPath)."""
    return f"{host_dir.rstrip('/')}/{namespace}/{task_name}/{MODEL_FILENAME}"
