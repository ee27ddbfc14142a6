"""The FederatedTask API as typed Python: spec and status dataclasses, defaults, validation (pure).

The dataclasses below are the single definition of the API: `crd.py` generates `crds/federatedtask.yaml` from them
(a test keeps the committed file identical to the generated one), and `parse_task` applies exactly the defaults,
bounds, enums and cross-field rules the CRD makes a Kubernetes API server apply. The dataclass-schema machinery
(fields with API metadata, decoding with field paths, encoding) is `schema.py`.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, cast

from fedtask_operator.core.conditions import FALSE, TRUE, UNKNOWN
from fedtask_operator.core.kube_types import KubeObject
from fedtask_operator.core.naming import DEVICE_LABEL
from fedtask_operator.core.phases import PHASES, STAGES, STATE_PENDING
from fedtask_operator.core.phases import STATES as DEVICE_STATES
from fedtask_operator.core.schema import (
    CrossFieldRule,
    DateTime,
    Decoder,
    FieldError,
    FreeForm,
    IntOrString,
    api_field,
    camel_case,
    encode,
    immutable_changes,
    value_at,
)
from fedtask_operator.core.status_types import TaskStatusDict

GROUP = "fedtask.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FederatedTask"
PLURAL = "federatedtasks"
SINGULAR = "federatedtask"
SHORT_NAMES = ["ft", "fedtask"]

HISTORY_LIMIT = 200  # status.history keeps the most recent rounds; the full record lives in the store

# Kubernetes' own quantity pattern (apimachinery resource.Quantity), applied to string values, bounded (issue 12): no
# sign (a request is never negative), at most 30 digits on either side of the point and a 1-3 digit exponent, so a
# string of 5000 digits is refused by the API server (at most 67 characters).
QUANTITY_PATTERN = (
    r"^\+?(([0-9]{1,30}(\.[0-9]{0,30})?)|(\.[0-9]{1,30}))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,3}))?$"
)
# A quantity given as a JSON integer (`cpu: 2`) skips the pattern: it is bounded by minimum 0 and this maximum.
MAX_QUANTITY_INTEGER = 10 ** 18
# Every integer of the spec has a minimum and a maximum (issue 12; tests/unit/test_crd_bounds.py walks the CRD).
MAX_SEED = 2 ** 31 - 1
MAX_SAMPLES = 10 ** 15  # updates' num_samples have at most 18 digits
MAX_DEADLINE_SECONDS = 366 * 24 * 3600
MAX_TOLERATION_SECONDS = 366 * 24 * 3600
# `mlp` (a registry name) or `package.module:callable` (the user's own code in the user's image).
PLUGIN_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*(:[A-Za-z_][A-Za-z0-9_.]*)?$"
# `package.module:callable` or empty (an optional hook into the user's own code).
CALLABLE_PATTERN = r"^([A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
OPTIONAL_DNS_LABEL_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
# A pool name; `namespace/pool` passes the pattern only so that its own rule can say why it is refused.
POOL_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
OPTIONAL_DNS_SUBDOMAIN_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$"
ABSOLUTE_PATH_PATTERN = r"^/"

STRATEGIES = ["fedavg", "fedavgm", "fedadam", "median", "trimmed-mean", "krum"]
DATA_SOURCES = ["builtin", "hostPath", "pvc"]
PARTITION_SCHEMES = ["iid", "dirichlet", "classes"]
OPTIMIZERS = ["sgd", "adam"]
ON_INVALID = ["skip", "fail"]
POLICIES = ["time-fair", "fastest", "random", "round-robin"]


# ----------------------------------------------------------------------------------------------------------------
# Shared Kubernetes types


@dataclass
class LabelSelectorRequirement:
    key: str = api_field("", required=True, max_length=317, doc="The label key the selector applies to.")
    operator: str = api_field("In", enum=["In", "NotIn", "Exists", "DoesNotExist"],
                              doc="In, NotIn, Exists or DoesNotExist.")
    values: list[str] = api_field([], max_items=64,
                                  doc="Label values; non-empty for In and NotIn, empty for Exists and DoesNotExist.")


@dataclass
class LabelSelector:
    match_labels: dict[str, str] = api_field({}, doc="Labels a node must carry, all of them.")
    match_expressions: list[LabelSelectorRequirement] = api_field([], max_items=32,
                                                                  doc="Set-based requirements, all of them.")


@dataclass
class Toleration:
    key: str = api_field("", doc="Taint key; empty with operator Exists tolerates every taint.")
    operator: str = api_field("Equal", enum=["Equal", "Exists"], doc="Equal or Exists.")
    value: str = api_field("", doc="Taint value for operator Equal.")
    effect: str = api_field("", enum=["", "NoSchedule", "PreferNoSchedule", "NoExecute"],
                            doc="Taint effect to tolerate; empty tolerates every effect.")
    toleration_seconds: int | None = api_field(None, minimum=0, maximum=MAX_TOLERATION_SECONDS,
                                               doc="How long a NoExecute taint is tolerated.")


# Resources per requests/limits map: bounds the CEL cost of the rule comparing them (a real pod names a handful: cpu,
# memory, ephemeral-storage, a GPU, two hugepages sizes). Kubernetes 1.34's estimator prices each compared pair at about
# 0.94M (an int-or-string is sized at the 3 MB request limit): 8 stay within the 10M per-rule budget, 12 do not.
MAX_RESOURCES = 8


def is_overcommit_forbidden(resource: str) -> bool:
    """Kubernetes' non-overcommitable resources: `hugepages-*` and extended resources (a domain-qualified name that
    is not native, i.e. not containing `kubernetes.io/`, such as `nvidia.com/gpu`; `requests.*` are quota names).
    The API server refuses a container with such a request and no limit, or with a request other than its limit."""
    if resource.startswith("hugepages-"):
        return True
    return "/" in resource and not resource.startswith("requests.") and "kubernetes.io/" not in resource


@dataclass
class ResourceRequirements:
    requests: dict[str, IntOrString] = api_field(
        {}, pattern=QUANTITY_PATTERN, minimum=0, maximum=MAX_QUANTITY_INTEGER, max_items=MAX_RESOURCES,
        doc="Per-pod requests, Kubernetes quantities (`cpu: 500m`, `nvidia.com/gpu: 1`). An extended resource "
            "(`nvidia.com/gpu`, `hugepages-2Mi`) given only here gets the same limit.")
    limits: dict[str, IntOrString] = api_field(
        {}, pattern=QUANTITY_PATTERN, minimum=0, maximum=MAX_QUANTITY_INTEGER, max_items=MAX_RESOURCES,
        doc="Per-pod limits. An extended resource given only here gets the same request (and the scheduler counts it).")


@dataclass
class LocalObjectReference:
    name: str = api_field("", required=True, max_length=253, doc="Name of the object in the task's namespace.")


# ----------------------------------------------------------------------------------------------------------------
# The pod template: what users add to the pods fedtask builds (the rest stays fedtask's, hardened)

# What fedtask sets on every pod and a template may not change: its own labels and annotations, the variables the
# worker reads (store, credentials, paths), the volumes it mounts and where it mounts them.
RESERVED_LABEL_PREFIX = "fedtask.io/"
RESERVED_LABELS = ["app.kubernetes.io/managed-by"]
RESERVED_ENV = ["HOME", "TMPDIR", "PYTHONUNBUFFERED"]
RESERVED_ENV_PREFIXES = ["FEDTASK_", "AWS_"]
USER_ENV = ["FEDTASK_TORCH_THREADS"]  # a FEDTASK_ variable the template may set (threads per worker)
RESERVED_VOLUMES = ["tmp", "home", "data", "models"]
RESERVED_MOUNT_PATHS = ["/tmp", "/home", "/home/fedtask", "/data", "/models", "/dev", "/dev/termination-log"]
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Absolute, no trailing slash, no empty, `.` or `..` segments.
MOUNT_PATH_PATTERN = r"^(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+$"
SUB_PATH_PATTERN = r"^([A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*)?$"


def _cel_list(items: list[str]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


def reserved_env(name: str) -> bool:
    return name in RESERVED_ENV or (name.startswith(tuple(RESERVED_ENV_PREFIXES)) and name not in USER_ENV)


def reserved_label(key: str) -> bool:
    return key.startswith(RESERVED_LABEL_PREFIX) or key in RESERVED_LABELS


@dataclass
class KeySelector:
    name: str = api_field("", required=True, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
                          doc="The Secret or ConfigMap, in the task's namespace.")
    key: str = api_field("", required=True, max_length=253, doc="The key in it.")
    optional: bool = api_field(False, doc="Whether the pod starts when the object or key is missing.")


@dataclass
class EnvVarSource:
    secret_key_ref: KeySelector | None = api_field(None, doc="A key of a Secret.")
    config_map_key_ref: KeySelector | None = api_field(None, doc="A key of a ConfigMap.")


@dataclass
class EnvVar:
    name: str = api_field("", required=True, pattern=ENV_NAME_PATTERN, max_length=256,
                          doc="Variable name; not one fedtask sets (HOME, TMPDIR, PYTHONUNBUFFERED, FEDTASK_*, AWS_*; "
                              "FEDTASK_TORCH_THREADS is allowed).")
    value: str = api_field("", max_length=32768, doc="The value.")
    value_from: EnvVarSource | None = api_field(None, doc="The value from a Secret or ConfigMap key instead.")


@dataclass
class ConfigMapVolumeSource:
    name: str = api_field("", required=True, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, doc="The ConfigMap.")
    optional: bool = api_field(False, doc="Whether the pod starts without it.")


@dataclass
class SecretVolumeSource:
    secret_name: str = api_field("", required=True, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, doc="The Secret.")
    optional: bool = api_field(False, doc="Whether the pod starts without it.")


@dataclass
class ClaimVolumeSource:
    claim_name: str = api_field("", required=True, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
                                doc="The PersistentVolumeClaim.")
    read_only: bool = api_field(False, doc="Mount it read-only.")


@dataclass
class EmptyDirVolumeSource:
    medium: str = api_field("", enum=["", "Memory"], doc="'' (node disk) or Memory (tmpfs).")


@dataclass
class Volume:
    name: str = api_field("", required=True, pattern=DNS_LABEL_PATTERN, max_length=63,
                          doc="Volume name; not one fedtask uses (tmp, home, data, models).")
    config_map: ConfigMapVolumeSource | None = api_field(None, doc="A ConfigMap's keys as files (your code).")
    secret: SecretVolumeSource | None = api_field(None, doc="A Secret's keys as files.")
    persistent_volume_claim: ClaimVolumeSource | None = api_field(None, doc="A PersistentVolumeClaim.")
    empty_dir: EmptyDirVolumeSource | None = api_field(None, doc="A scratch folder for the pod's lifetime.")


@dataclass
class VolumeMount:
    name: str = api_field("", required=True, pattern=DNS_LABEL_PATTERN, max_length=63,
                          doc="One of podTemplate.volumes.")
    mount_path: str = api_field("", required=True, pattern=MOUNT_PATH_PATTERN, max_length=1024,
                                doc="Where the worker container sees it; not a path fedtask uses (/tmp, /home, "
                                    "/home/fedtask, /data, /models, /dev).")
    sub_path: str = api_field("", pattern=SUB_PATH_PATTERN, max_length=1024, doc="A relative path inside the volume.")
    read_only: bool = api_field(False, doc="Mount it read-only.")


@dataclass
class PodMetadata:
    labels: dict[str, str] = api_field({}, max_items=64, max_length=63,
                                       doc="Added to every pod (e.g. kueue.x-k8s.io/queue-name, cost labels); not "
                                           "fedtask.io/* or app.kubernetes.io/managed-by.")
    annotations: dict[str, str] = api_field({}, max_items=64, max_length=4096,
                                            doc="Added to every pod (e.g. sidecar.istio.io/inject: \"false\"); not "
                                                "fedtask.io/*.")


@dataclass
class PodTemplate:
    """What every pod of the task gets besides what fedtask builds (see the pod template section of the reference)."""

    metadata: PodMetadata = api_field(factory=PodMetadata, doc="Labels and annotations of every pod.")
    runtime_class_name: str = api_field("", pattern=OPTIONAL_DNS_SUBDOMAIN_PATTERN, max_length=253,
                                        doc="RuntimeClass of every pod (e.g. nvidia); it must be listed by the "
                                            "operator (--allowed-runtime-class).")
    scheduler_name: str = api_field("", pattern=OPTIONAL_DNS_SUBDOMAIN_PATTERN, max_length=253,
                                    doc="The scheduler of every pod (e.g. volcano); default the cluster's. Any "
                                        "other than default-scheduler must be listed by the operator "
                                        "(--allowed-scheduler-name).")
    env: list[EnvVar] = api_field([], max_items=64, doc="Variables added to the worker container.")
    volumes: list[Volume] = api_field([], max_items=16, doc="Volumes added to every pod (e.g. your code).")
    volume_mounts: list[VolumeMount] = api_field([], max_items=16,
                                                 doc="Where the worker container mounts podTemplate.volumes.")


@dataclass
class ServerSpec:
    """The server-side pods (init, aggregate, adjust): resources and where they run."""

    resources: ResourceRequirements = api_field(factory=ResourceRequirements,
                                                doc="Resources of the server-side pods; default adjustment.resources "
                                                    "(deprecated there).")
    node_selector: dict[str, str] = api_field({}, max_items=64, max_length=63,
                                              doc="Node labels the server-side pods need, all of them.")
    tolerations: list[Toleration] = api_field([], max_items=64, doc="Tolerations of the server-side pods.")


# ----------------------------------------------------------------------------------------------------------------
# Spec


@dataclass
class ModelSpec:
    name: str = api_field("mlp", pattern=PLUGIN_PATTERN, max_length=256, immutable=True,
                          doc="A registered model (`mlp`, `cnn`) or `module:callable` from the worker image.")
    args: FreeForm = api_field({}, doc="Keyword arguments for the model constructor.")
    seed: int = api_field(0, minimum=0, maximum=MAX_SEED, immutable=True, doc="Seed of the initial weights.")
    initial_uri: str = api_field("", max_length=2048, immutable=True,
                                 doc="Warm start: a safetensors model to start from instead of random weights.")


@dataclass
class PartitionSpec:
    scheme: str = api_field("iid", enum=PARTITION_SCHEMES,
                            doc="How builtin data is shared out to simulated devices: iid, dirichlet or classes.")
    alpha: float = api_field(0.5, minimum=0, exclusive_minimum=True,
                             doc="Dirichlet concentration; smaller is more skewed.")
    classes_per_device: int = api_field(2, minimum=1, maximum=10000,
                                        doc="Classes each device holds with scheme classes.")
    seed: int = api_field(0, minimum=0, maximum=MAX_SEED, doc="Seed of the partition.")


@dataclass
class SharedDataSpec:
    fraction: float = api_field(0.01, minimum=0, maximum=1, exclusive_maximum=True,
                                doc="Fraction of the training set held by the server as the globally shared dataset.")
    uri: str = api_field("", max_length=2048,
                         doc="A shared dataset in the store, instead of a fraction of the builtin dataset.")
    to_devices: float | None = api_field(None, minimum=0, maximum=1,
                                         doc="Builtin data: the share of the shared set (fraction) every simulated "
                                             "device also trains on, a different random slice per device (Zhao et "
                                             "al. 2018); 0 keeps the shared set on the server. Default: 1 while "
                                             "adjustment.enabled (the shared set is used on the server and on the "
                                             "devices), 0 without it (docs/results.md).")


@dataclass
class DataSpec:
    dataset: str = api_field("mnist", pattern=PLUGIN_PATTERN, max_length=256, immutable=True,
                             doc="mnist, digits, synthetic or `module:callable`.")
    args: FreeForm = api_field({}, doc="Keyword arguments for the dataset.")
    source: str = api_field("builtin", enum=DATA_SOURCES, immutable=True,
                            doc="builtin: simulated devices share out the dataset; hostPath/pvc: each device node "
                                "holds its own data.")
    host_path: str = api_field("/var/lib/fedtask/data", pattern=ABSOLUTE_PATH_PATTERN, max_length=4096, immutable=True,
                               doc="source=hostPath: on every device node, the task's data is in "
                                   "`<hostPath>/<namespace>/<task>`, the only folder its pods mount; hostPath must lie "
                                   "under the operator's allowed prefixes (default /var/lib/fedtask).")
    claim_name: str = api_field("fedtask-data-{node}", max_length=253, immutable=True,
                                doc="source=pvc: the claim per device node; `{node}` is replaced by the node name.")
    partition: PartitionSpec = api_field(factory=PartitionSpec, immutable=True, doc="Partition of builtin data.")
    shared: SharedDataSpec = api_field(factory=SharedDataSpec, immutable=True,
                                       doc="The globally shared dataset held by the server.")


def default_device_selector() -> LabelSelector:
    return LabelSelector(match_labels={DEVICE_LABEL: "true"})


@dataclass
class DevicesSpec:
    selector: LabelSelector = api_field(factory=default_device_selector,
                                        doc="Nodes that may serve as devices (a LabelSelector).")
    count: int | None = api_field(None, minimum=1, maximum=100000,
                                  doc="Simulated devices for builtin data; default: all matching nodes.")
    per_round: int = api_field(5, minimum=1, maximum=10000, doc="Target devices per round.")
    min_returned: int | None = api_field(None, minimum=1, maximum=10000,
                                         doc="Quorum once the round deadline passes; default perRound (wait for all).")
    resources: ResourceRequirements = api_field(factory=ResourceRequirements, doc="Resources of every train pod.")
    tolerations: list[Toleration] = api_field([], max_items=64, doc="Tolerations of every train pod.")
    pool: str = api_field("", pattern=POOL_PATTERN, max_length=127,
                          doc="Builtin data: the pool of simulated devices the task shares with the tasks of its "
                              "namespace that name the same pool; device i of the pool holds shard i of every such "
                              "task's dataset and trains at most one task at a time. Pools do not cross namespaces "
                              "(`namespace/pool` is refused). Default (empty): the task's own devices.")

    @property
    def quorum(self) -> int:
        return self.per_round if self.min_returned is None else self.min_returned


@dataclass
class TrainingSpec:
    local_epochs: int = api_field(1, minimum=1, maximum=1000, doc="Epochs over a device's data per round.")
    batch_size: int = api_field(32, minimum=1, maximum=1000000, doc="Local batch size.")
    learning_rate: float = api_field(0.1, minimum=0, exclusive_minimum=True, doc="Local learning rate.")
    optimizer: str = api_field("sgd", enum=OPTIMIZERS, doc="sgd or adam.")
    momentum: float = api_field(0.0, minimum=0, maximum=1, exclusive_maximum=True, doc="SGD momentum.")
    weight_decay: float = api_field(0.0, minimum=0, doc="L2 weight decay.")
    proximal_mu: float = api_field(0.0, minimum=0, doc="FedProx proximal term; 0 is plain FedAvg local training.")
    step: str = api_field("", pattern=CALLABLE_PATTERN, max_length=256,
                          doc="Your own loss, `module:callable`: `step(model, inputs, targets)` returns the batch's "
                              "loss as a scalar tensor; fedtask adds the FedProx term, backpropagates and steps the "
                              "optimizer. Used by local training, the server-side adjustment and the validation loss. "
                              "Default (empty): cross-entropy over integer class labels.")


@dataclass
class EvaluationSpec:
    function: str = api_field("", pattern=CALLABLE_PATTERN, max_length=256, immutable=True,
                              doc="Your own metric, `module:callable`: `function(model, inputs, targets)` gets the "
                                  "whole validation split, then the whole test split (tensors, no_grad, eval mode) and "
                                  "returns a score or a mapping with `score` and optionally `loss` and other metrics. "
                                  "The score (finite, higher is better) takes the place of accuracy everywhere: "
                                  "status.validationAccuracy, status.accuracy, history, best, rounds.targetAccuracy "
                                  "and rounds.patience. Default (empty): classification accuracy.")


@dataclass
class AggregationSpec:
    strategy: str = api_field("fedavg", enum=STRATEGIES, doc="How updates are combined.")
    server_learning_rate: float = api_field(1.0, minimum=0, exclusive_minimum=True,
                                            doc="Server step size (fedavgm, fedadam).")
    server_momentum: float = api_field(0.9, minimum=0, maximum=1, exclusive_maximum=True,
                                       doc="Server momentum (fedavgm) or first-moment decay (fedadam).")
    trim_fraction: float = api_field(0.1, minimum=0, maximum=0.5, exclusive_maximum=True,
                                     doc="Share cut from each end per coordinate (trimmed-mean).")
    byzantine: int = api_field(0, minimum=0, maximum=10000, doc="Number of faulty updates tolerated (krum).")
    on_invalid: str = api_field("skip", enum=ON_INVALID,
                                doc="skip: an invalid update is left out and recorded; fail: the round fails.")
    clip_norm: float | None = api_field(None, minimum=0, exclusive_minimum=True,
                                        doc="Norm bound: an update farther than this (L2 distance of its float "
                                            "tensors from the global model) is scaled down to it; default none.")
    max_samples_per_update: int | None = api_field(None, minimum=1, maximum=MAX_SAMPLES,
                                                   doc="The most num_samples an update may claim (its weight); a "
                                                       "larger claim is clipped. Builtin data is also capped by the "
                                                       "shard size its train pod reported; default none.")


@dataclass
class AdjustmentSpec:
    enabled: bool = api_field(True, doc="Fine-tune the aggregated model on the shared dataset every round.")
    epochs: int = api_field(1, minimum=1, maximum=1000, doc="Epochs over the shared dataset.")
    batch_size: int = api_field(32, minimum=1, maximum=1000000, doc="Batch size of the adjustment.")
    learning_rate: float = api_field(0.05, minimum=0, exclusive_minimum=True, doc="Learning rate of the adjustment.")
    learning_rate_decay: float = api_field(1.0, minimum=0, maximum=1, exclusive_minimum=True,
                                           doc="Round r fine-tunes at learningRate x learningRateDecay^(r-1): "
                                               "less trust in the shared set as the rounds go on; 1 keeps the "
                                               "rate constant (docs/results.md, Design study).")
    distillation: float = api_field(0.0, minimum=0, maximum=1,
                                    doc="FedDF (Lin et al. 2020): weight of distilling the ensemble of the round's "
                                        "accepted client models (their mean logits on the shared inputs) into the "
                                        "aggregated model, against the shared labels' cross-entropy: 1 is FedDF, "
                                        "0 plain fine-tuning. Classification with the default train step only "
                                        "(docs/results.md, Design study).")
    resources: ResourceRequirements = api_field(factory=ResourceRequirements,
                                                doc="Deprecated, use server.resources (it applies when "
                                                    "server.resources is empty).")


@dataclass
class RoundsSpec:
    max: int = api_field(20, minimum=1, maximum=100000, doc="Rounds to run at most; rounds are numbered from 1.")
    target_accuracy: float = api_field(0.0, minimum=0, maximum=1,
                                       doc="Stop once the adjusted model reaches this accuracy (or "
                                           "evaluation.function's score) on the validation split; 0 disables.")
    patience: int = api_field(0, minimum=0, maximum=100000,
                              doc="Stop after this many rounds without a better validation accuracy; 0 disables.")
    timeout_seconds: int = api_field(600, minimum=1, maximum=604800,
                                     doc="Round deadline: after it, the round goes on with minReturned updates.")
    quorum_timeout_seconds: int | None = api_field(
        None, minimum=1, maximum=1209600,
        doc="A round that has fewer than minReturned updates this long after it began fails (QuorumNotReached); "
            "between timeoutSeconds and this it waits for its running devices (Stalled). Default: twice "
            "timeoutSeconds. Must be >= timeoutSeconds.")

    @property
    def quorum_timeout(self) -> int:
        """Seconds from a round's start after which it fails below quorum (quorumTimeoutSeconds, default twice
        timeoutSeconds)."""
        if self.quorum_timeout_seconds is None:
            return 2 * self.timeout_seconds
        return self.quorum_timeout_seconds


@dataclass
class StorageSpec:
    bucket: str = api_field("", max_length=63, doc="S3 bucket; default from the operator's configuration.")
    prefix: str = api_field("", max_length=1024,
                            doc="Key prefix in the bucket; default from the operator's configuration.")
    endpoint: str = api_field("", max_length=253,
                              doc="S3 endpoint (host:port); default from the operator's configuration.")
    secret_ref: LocalObjectReference | None = api_field(
        None, doc="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; default from the operator's configuration.")


@dataclass
class PublishSpec:
    to_devices: bool = api_field(False, doc="Copy the final model to every device node.")
    host_path: str = api_field("/var/lib/fedtask/models", pattern=ABSOLUTE_PATH_PATTERN,
                               doc="Directory on the device nodes; the model is copied to "
                                   "`<hostPath>/<namespace>/<task>/model.safetensors` (only that folder is mounted); "
                                   "it must lie under the operator's allowed prefixes (default /var/lib/fedtask).")


@dataclass
class SchedulingSpec:
    priority: int = api_field(0, minimum=-1000, maximum=1000, doc="Higher-priority tasks get devices first.")
    policy: str = api_field("time-fair", enum=POLICIES, doc="Device choice: time-fair, fastest, random, round-robin.")
    fairness_weight: float | None = api_field(
        None, minimum=0, maximum=1000,
        doc="time-fair: the weight of unfairness against time in the period's cost (round time in typical rounds + "
            "weight x the variance of the devices' participation, scaled so that weight 1 trades one typical round "
            "for a round of devices one mean participation further behind); 0 gives the fastest feasible devices. "
            "Default: the operator's (--fairness-weight).")


@dataclass
class TaskSpec:
    model: ModelSpec = api_field(factory=ModelSpec, doc="The model to train.")
    data: DataSpec = api_field(factory=DataSpec, doc="The training data and where devices find it.")
    devices: DevicesSpec = api_field(factory=DevicesSpec, doc="Which devices train, how many per round.")
    training: TrainingSpec = api_field(factory=TrainingSpec, doc="Local training on the devices.")
    aggregation: AggregationSpec = api_field(factory=AggregationSpec, doc="How the server combines updates.")
    adjustment: AdjustmentSpec = api_field(factory=AdjustmentSpec,
                                           doc="Server-side fine-tuning on the globally shared dataset.")
    evaluation: EvaluationSpec = api_field(factory=EvaluationSpec,
                                           doc="How the global model is scored every round (default: accuracy).")
    rounds: RoundsSpec = api_field(factory=RoundsSpec, doc="How many rounds and when to stop.")
    storage: StorageSpec = api_field(factory=StorageSpec, immutable=True,
                                     doc="The object store; defaults from the operator.")
    publish: PublishSpec = api_field(factory=PublishSpec, doc="What happens with the final model.")
    scheduling: SchedulingSpec = api_field(factory=SchedulingSpec, doc="Device selection among competing tasks.")
    image: str = api_field("", doc="Worker image; default from the operator's configuration.")
    image_pull_secrets: list[LocalObjectReference] = api_field([], max_items=16, doc="Passed to every pod.")
    service_account_name: str = api_field("", doc="Passed to every pod.")
    priority_class_name: str = api_field("", doc="Passed to every pod.")
    pod_template: PodTemplate = api_field(factory=PodTemplate,
                                          doc="Labels, annotations, runtime class, scheduler, env and volumes added "
                                              "to every pod.")
    server: ServerSpec = api_field(factory=ServerSpec,
                                   doc="The server-side pods (init, aggregate, adjust): resources, nodeSelector, "
                                       "tolerations.")
    suspend: bool = api_field(False, doc="Stop launching pods; resume at the same round when set back to false.")
    pod_retry_limit: int = api_field(3, minimum=0, maximum=100,
                                     doc="Retries of each failed pod: a device's train pod in a round, a server-side "
                                         "stage pod, a publish pod. Unlike a Job's backoffLimit it counts per pod, "
                                         "not per task: failures of different pods do not add up. A device whose pod "
                                         "used them up is left out of the round (and replaced when a device is "
                                         "free); a server-side stage that did fails the task "
                                         "(PodRetryLimitExceeded). Bad input (exit 2) is never retried.")
    store_outage_seconds: int = api_field(
        900, minimum=0, maximum=86400,
        doc="A pod that exits 3 (the store stayed unreachable through the worker's own retries) is retried after a "
            "backoff (5 s doubling to 60 s, jittered) without counting against podRetryLimit, for this long from "
            "its first such exit; then it fails as usual (condition reason StoreUnavailable).")
    stage_timeout_seconds: int = api_field(
        3600, minimum=1, maximum=604800,
        doc="A server-side stage pod (init, aggregate, adjust) or a publish pod that has no result this long after "
            "it was created is replaced (a failed attempt, counted against podRetryLimit); when none is left the task "
            "fails (StageDeadlineExceeded).")
    node_lost_grace_seconds: int = api_field(
        120, minimum=0, maximum=86400,
        doc="A pod whose node has been NotReady (Ready False or Unknown) this long is given up (a NodeLost event): "
            "a train pod's device fails and is replaced, a server-side stage or publish pod is replaced by its next "
            "attempt (counted against podRetryLimit). A pod on a deleted node is given up at once. (Kubernetes "
            "itself evicts such pods only after 300 s.)")
    active_deadline_seconds: int | None = api_field(None, minimum=1, maximum=MAX_DEADLINE_SECONDS,
                                                    doc="The task fails when running longer.")
    ttl_seconds_after_finished: int | None = api_field(None, minimum=0, maximum=MAX_DEADLINE_SECONDS,
                                                       doc="Delete the finished task after this many seconds.")

    @property
    def shared_to_devices(self) -> float:
        """data.shared.toDevices as set, or its default: the whole builtin shared set while the adjustment uses it."""
        if self.data.shared.to_devices is not None:
            return self.data.shared.to_devices
        builtin_shared = self.data.shared.fraction > 0 and not self.data.shared.uri
        return 1.0 if self.adjustment.enabled and builtin_shared else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Status


@dataclass
class Condition:
    type: str = api_field("", required=True, doc="Ready, Progressing, Unschedulable, Succeeded, Failed, ...")
    status: str = api_field(UNKNOWN, required=True, enum=[TRUE, FALSE, UNKNOWN], doc="True, False or Unknown.")
    reason: str = api_field("", doc="A CamelCase constant (see conditions.py).")
    message: str = api_field("", doc="What is wrong and what would fix it.")
    last_transition_time: DateTime | None = api_field(None, doc="When status last changed.")
    observed_generation: int | None = api_field(None, doc="The spec generation the condition was computed from.")


@dataclass
class DeviceStatus:
    device: str = api_field("", doc="Node name (node devices) or shard id such as d007 (builtin data).")
    node: str = api_field("", doc="The node the train pod runs on.")
    pod: str = api_field("", doc="The current train pod.")
    state: str = api_field(STATE_PENDING, enum=DEVICE_STATES, doc="Pending, Running, Succeeded, Failed or Excluded.")
    reason: str = api_field("", doc="Why the device failed or was excluded.")
    attempts: int = api_field(0, minimum=0, doc="Failed attempts so far (retries used).")
    start_time: DateTime | None = api_field(None, doc="When the current pod was created.")
    finish_time: DateTime | None = api_field(None, doc="When the update arrived or the device gave up.")
    outages: int = api_field(0, minimum=0, doc="Attempts that ended in a store outage (exit 3); not counted "
                                                 "against podRetryLimit.")
    outage_since: DateTime | None = api_field(None, doc="When the first of those ended.")
    retry_after: DateTime | None = api_field(None, doc="The next pod is created no earlier (the outage backoff).")
    result: FreeForm | None = api_field(None, doc="The train stage's result (num_samples, loss, seconds, bytes).")


@dataclass
class StagePodStatus:
    """The current server-side pod of the task (init, aggregate or adjust)."""

    stage: str = api_field("", doc="init, aggregate or adjust.")
    pod: str = api_field("", doc="Pod name.")
    state: str = api_field(STATE_PENDING, enum=DEVICE_STATES, doc="Pending, Running, Succeeded or Failed.")
    reason: str = api_field("", doc="Why the last attempt failed.")
    attempts: int = api_field(0, minimum=0, doc="Failed attempts so far.")
    start_time: DateTime | None = api_field(None, doc="When the stage began.")
    finish_time: DateTime | None = api_field(None, doc="When the stage finished.")
    outages: int = api_field(0, minimum=0, doc="Attempts that ended in a store outage (exit 3); not counted "
                                                 "against podRetryLimit.")
    outage_since: DateTime | None = api_field(None, doc="When the first of those ended.")
    retry_after: DateTime | None = api_field(None, doc="The next pod is created no earlier (the outage backoff).")
    result: FreeForm | None = api_field(None, doc="The stage's result, once it succeeded.")


@dataclass
class PublishStatus:
    node: str = api_field("", doc="The device node the model is copied to.")
    pod: str = api_field("", doc="The publish pod.")
    state: str = api_field(STATE_PENDING, enum=DEVICE_STATES, doc="Pending, Running, Succeeded or Failed.")
    reason: str = api_field("", doc="Why it failed.")
    attempts: int = api_field(0, minimum=0, doc="Failed attempts so far.")
    start_time: DateTime | None = api_field(None, doc="When the current pod was created (its stageTimeoutSeconds "
                                                      "count from here).")
    finish_time: DateTime | None = api_field(None, doc="When the model was copied or the node gave up.")
    result: FreeForm | None = api_field(None, doc="The publish stage's result.")
    outages: int = api_field(0, minimum=0, doc="Attempts that ended in a store outage (exit 3); not counted "
                                                 "against podRetryLimit.")
    outage_since: DateTime | None = api_field(None, doc="When the first of those ended.")
    retry_after: DateTime | None = api_field(None, doc="The next pod is created no earlier (the outage backoff).")


@dataclass
class AssignedDevice:
    device: str = api_field("", doc="Device id (node name or shard id).")
    node: str = api_field("", doc="Node the device's train pod runs on.")
    estimated_seconds: float | None = api_field(None, doc="The scheduler's estimate of the train time.")


@dataclass
class RoundRecord:
    round: int = api_field(0, minimum=0, doc="Round number, from 1.")
    devices: list[str] = api_field([], doc="Devices that were asked to train.")
    returned: list[str] = api_field([], doc="Devices whose updates arrived in time.")
    excluded: list[str] = api_field([], doc="Stragglers and failed devices left out of the round.")
    rejected: list[str] = api_field([], doc="Updates the aggregator rejected as invalid.")
    accuracy: float | None = api_field(None, doc="Accuracy (or evaluation.function's score) of the round's global "
                                                 "model (after adjustment) on the dataset's test split (see "
                                                 "status.evaluation): reported, never decided on.")
    loss: float | None = api_field(None, doc="Loss of the round's global model on the test split.")
    validation_accuracy: float | None = api_field(None, doc="Accuracy (or score) of the round's global model on the "
                                                            "validation split, held out from the training data: what "
                                                            "rounds.targetAccuracy, rounds.patience and best go by.")
    validation_loss: float | None = api_field(None, doc="Loss of the round's global model on the validation split.")
    start_time: DateTime | None = api_field(None, doc="When the round began.")
    duration_seconds: float | None = api_field(None, doc="Wall time of the whole round.")
    train_seconds: float | None = api_field(None, doc="Wall time from the first train pod to the barrier.")
    aggregate_seconds: float | None = api_field(None, doc="Wall time of the aggregate stage.")
    adjust_seconds: float | None = api_field(None, doc="Wall time of the adjust stage.")
    samples: int | None = api_field(None, doc="Training samples behind the round's update.")
    uri: str = api_field("", doc="The round's global model.")
    period: int | None = api_field(None, minimum=1, doc="The learning period (joint device decision over every task "
                                                        "that needed devices) that chose the round's devices.")
    device_count: int | None = api_field(None, minimum=0, doc="How many devices were asked to train (the devices "
                                                              "list keeps at most 100 names, old rounds none).")
    returned_count: int | None = api_field(None, minimum=0, doc="How many updates arrived in time.")
    excluded_count: int | None = api_field(None, minimum=0, doc="How many devices were left out of the round.")
    rejected_count: int | None = api_field(None, minimum=0, doc="How many updates the aggregator rejected.")


@dataclass
class ModelRef:
    uri: str = api_field("", doc="Object URI of the model.")
    round: int | None = api_field(None, doc="The round that produced it.")
    accuracy: float | None = api_field(None, doc="Its accuracy (or evaluation.function's score) on the test split.")
    validation_accuracy: float | None = api_field(None, doc="Its accuracy (or score) on the validation split.")


@dataclass
class TaskStatus:
    phase: str | None = api_field(None, enum=PHASES, doc="Pending, Running, Succeeded, Failed or Suspended.")
    round: int | None = api_field(None, minimum=0, doc="The current round (0 while initializing).")
    stage: str | None = api_field(None, enum=STAGES, doc="The current stage of the round.")
    accuracy: float | None = api_field(None, doc="Accuracy (or evaluation.function's score) of the latest round's "
                                                 "global model on the dataset's test split: reported, never decided "
                                                 "on.")
    validation_accuracy: float | None = api_field(
        None, doc="Accuracy (or score) of the latest round's global model on the validation split (held out from the "
                  "training data), which rounds.targetAccuracy, rounds.patience and best go by.")
    evaluation: str = api_field("", doc="Which split each accuracy is measured on, with its size.")
    observed_generation: int | None = api_field(None, doc="The spec generation this status reflects.")
    shard_count: int | None = api_field(None, minimum=1,
                                        doc="Simulated devices (builtin data): devices.count or the matching nodes "
                                            "when the task started.")
    message: str = api_field("", doc="A one-line summary for humans.")
    conditions: list[Condition] = api_field([], doc="Keyed by type; reasons are constants.")
    devices: list[DeviceStatus] = api_field([], doc="This round's target devices (rounds of up to 100 devices).")
    device_rows: list[str] = api_field(
        [], doc="This round's target devices when there are more than 100, one packed row each (see "
                "docs/internals.md, bounded status).")
    device_nodes: list[str] = api_field([], doc="The nodes deviceRows refer to by index.")
    device_reasons: list[str] = api_field([], doc="The failure reasons deviceRows refer to by index.")
    current: StagePodStatus | None = api_field(None, doc="The current server-side pod (init, aggregate, adjust).")
    published: list[PublishStatus] = api_field([], doc="Publish pods, one per device node (publish.toDevices).")
    assignment: list[AssignedDevice] = api_field(
        [], doc="The scheduler's choice of devices for this round, with its time estimates (replacements appended; "
                "the first 100).")
    assignment_count: int | None = api_field(None, minimum=0, doc="How many devices the assignment had, when it "
                                                                  "lists only the first 100.")
    current_round: RoundRecord | None = api_field(
        None, doc="The round in flight, filled in stage by stage; appended to history when it completes.")
    history: list[RoundRecord] = api_field([], doc=f"Finished rounds, the most recent {HISTORY_LIMIT}.")
    model: ModelRef | None = api_field(None, doc="The published final model (the last round's global).")
    best: ModelRef | None = api_field(None, doc="The global model of the round with the best validation accuracy "
                                                "(or score).")
    participation: dict[str, int] = api_field({}, doc="Device -> rounds it trained in (fairness); at most 2000 "
                                                      "devices, the ones that trained most.")
    participation_default: int | None = api_field(None, minimum=0, doc="The rounds counted for every device "
                                                                     "participation does not name.")
    train_seconds_estimate: dict[str, float] = api_field({}, doc="Device -> observed train time (EWMA), seconds; "
                                                                 "at most 2000 devices, the least typical ones.")
    waiting_since: DateTime | None = api_field(None, doc="When the task began waiting for devices.")
    period: int | None = api_field(None, minimum=1, doc="The last learning period (a joint device decision over "
                                                        "every task that needed devices) the task took part in.")
    period_time: DateTime | None = api_field(None, doc="When that period's decision was taken.")
    fairness: float | None = api_field(None, minimum=0, maximum=1,
                                       doc="Jain's index of the devices' participation in this task (1: every "
                                           "device trained equally often).")
    round_start_time: DateTime | None = api_field(None, doc="When the current round began.")
    start_time: DateTime | None = api_field(None, doc="When the task began running.")
    completion_time: DateTime | None = api_field(None, doc="When the task succeeded or failed.")


# ----------------------------------------------------------------------------------------------------------------
# Cross-field rules: each is a CEL rule in the CRD and the same check in Python (a test proves they agree).


POOL_MESSAGE = (
    "names a pool of another namespace: a pool is shared only by the tasks of the task's own namespace (its tasks "
    "share devices, their timings and turns, and a higher priority takes devices from the others, which must not "
    "cross a tenant's boundary); name a pool of this namespace, without 'namespace/'")
CROSS_FIELD_RULES: list[CrossFieldRule] = [
    CrossFieldRule(("devices",), "!has(self.minReturned) || self.minReturned <= self.perRound",
                   "must be <= perRound", ".minReturned",
                   lambda d: d.min_returned is None or d.min_returned <= d.per_round),
    CrossFieldRule(("devices",), "!self.pool.contains('/')", POOL_MESSAGE, ".pool", lambda d: "/" not in d.pool),
    CrossFieldRule(("rounds",), "!has(self.quorumTimeoutSeconds) || self.quorumTimeoutSeconds >= self.timeoutSeconds",
                   "must be >= rounds.timeoutSeconds (a round below minReturned waits at least until its deadline); "
                   "raise it or leave it out (twice timeoutSeconds)", ".quorumTimeoutSeconds",
                   lambda r: r.quorum_timeout_seconds is None or r.quorum_timeout_seconds >= r.timeout_seconds),
    CrossFieldRule(("devices",), "!has(self.count) || self.perRound <= self.count",
                   "must be <= count", ".perRound",
                   lambda d: d.count is None or d.per_round <= d.count),
    CrossFieldRule((), "!has(self.devices.count) || self.data.source == 'builtin'",
                   "applies to data.source builtin only (with hostPath or pvc data every matching node is a device)",
                   ".devices.count", lambda s: s.devices.count is None or s.data.source == "builtin"),
    CrossFieldRule((), "!self.adjustment.enabled || self.data.shared.fraction > 0.0 || self.data.shared.uri != ''",
                   "adjustment needs a shared dataset: set data.shared.fraction > 0 or data.shared.uri, "
                   "or adjustment.enabled: false", ".adjustment.enabled",
                   lambda s: not s.adjustment.enabled or s.data.shared.fraction > 0 or s.data.shared.uri != ""),
    CrossFieldRule((), "self.adjustment.distillation == 0.0 || self.training.step == ''",
                   "distillation needs the default train step (classification logits): set training.step: '' or "
                   "adjustment.distillation: 0", ".adjustment.distillation",
                   lambda s: s.adjustment.distillation == 0 or s.training.step == ""),
    CrossFieldRule((), "self.devices.pool == '' || self.data.source == 'builtin'",
                   "applies to data.source builtin only (with hostPath or pvc data the device nodes are shared by "
                   "every task they match)", ".devices.pool",
                   lambda s: s.devices.pool == "" or s.data.source == "builtin"),
    CrossFieldRule(("data",), "self.source != 'pvc' || self.claimName.contains('{node}')",
                   "must contain {node} (one claim per device node)", ".claimName",
                   lambda d: d.source != "pvc" or "{node}" in d.claim_name),
    CrossFieldRule((), "self.aggregation.strategy != 'krum' || (has(self.devices.minReturned) ? "
                       "self.devices.minReturned : self.devices.perRound) >= 2 * self.aggregation.byzantine + 3",
                   "krum needs devices.minReturned (default perRound) >= 2 * byzantine + 3", ".aggregation.byzantine",
                   lambda s: s.aggregation.strategy != "krum" or s.devices.quorum >= 2 * s.aggregation.byzantine + 3),
    CrossFieldRule((), "size(self.server.resources.requests) + size(self.server.resources.limits) == 0 || "
                       "size(self.adjustment.resources.requests) + size(self.adjustment.resources.limits) == 0",
                   "set server.resources only (adjustment.resources is its deprecated name)", ".server.resources",
                   lambda s: not (s.server.resources.requests or s.server.resources.limits)
                   or not (s.adjustment.resources.requests or s.adjustment.resources.limits)),
]

# What a running task cannot change: its model, its data and their partition, where its objects live.
IMMUTABLE_MESSAGE = "is immutable once the task exists: create a new FederatedTask instead"
# Fields marked `immutable=True` get `self == oldSelf` (on scalars and small objects only: a rule over free-form
# content such as model.args would have an unbounded estimated cost, and an API server refuses such a CRD).
CROSS_FIELD_RULES += [
    CrossFieldRule(("devices",), "has(self.count) == has(oldSelf.count) && (!has(self.count) || "
                                 "self.count == oldSelf.count)", IMMUTABLE_MESSAGE, ".count",
                   lambda old, new: old.count == new.count, True),
]

# An extended resource (hugepages-* or a non-native domain-qualified name) whose limit and request are both given
# but written differently (is_overcommit_forbidden in CEL; quantities are compared as written).
_LIMIT_CONFLICT_CEL = ("k in self.requests && (k.startsWith('hugepages-') || (k.contains('/') && "
                       "!k.startsWith('requests.') && !k.contains('kubernetes.io/'))) && "
                       "string(self.requests[k]) != string(self.limits[k])")
_LIMIT_CONFLICT_MESSAGE = ("an extended resource (hugepages-*, or a domain-qualified name such as nvidia.com/gpu) must "
                           "have its limit equal to its request (the API server refuses the pods otherwise): write "
                           "both the same way (they are compared as written: 1 and \"1\" match, 1 and \"1000m\" do "
                           "not) or give only one (the other defaults to it)")
_LIMIT_CONFLICT_MESSAGE_CEL = _LIMIT_CONFLICT_MESSAGE.replace("\\", "\\\\").replace("'", "\\'")


def _limit_conflicts(resources: ResourceRequirements) -> list[str]:
    return [k for k, v in resources.limits.items()
            if k in resources.requests and is_overcommit_forbidden(k) and str(resources.requests[k]) != str(v)]


def _limit_conflict_message(names: list[str]) -> str:
    if len(names) == 1:
        return f"the limit of {names[0]} differs from its request: {_LIMIT_CONFLICT_MESSAGE}"
    return f"the limits of {', '.join(names)} differ from their requests: {_LIMIT_CONFLICT_MESSAGE}"


# Per-item rules on shared types, keyed by the dataclass they are attached to.
TYPE_RULES: dict[type, list[CrossFieldRule]] = {
    ResourceRequirements: [
        CrossFieldRule((), f"self.limits.all(k, !({_LIMIT_CONFLICT_CEL}))", _LIMIT_CONFLICT_MESSAGE, ".limits",
                       lambda r: not _limit_conflicts(r),
                       # names one conflicting resource (a map's order is not defined in CEL); Python names all
                       message_expression=f"'the limit of ' + self.limits.filter(k, {_LIMIT_CONFLICT_CEL})[0] + "
                                          f"' differs from its request: {_LIMIT_CONFLICT_MESSAGE_CEL}'",
                       describe=lambda r: _limit_conflict_message(_limit_conflicts(r))),
    ],
    LabelSelectorRequirement: [
        CrossFieldRule((), "self.operator in ['Exists', 'DoesNotExist'] ? size(self.values) == 0 "
                           ": size(self.values) > 0",
                       "must be empty for Exists and DoesNotExist and non-empty for In and NotIn", ".values",
                       lambda r: (len(r.values) == 0) == (r.operator in ("Exists", "DoesNotExist"))),
    ],
    Toleration: [
        CrossFieldRule((), "self.operator != 'Exists' || self.value == ''", "must be empty with operator Exists",
                       ".value", lambda t: t.operator != "Exists" or t.value == ""),
    ],
    EnvVar: [
        CrossFieldRule((), f"!(self.name in {_cel_list(RESERVED_ENV)}) && (self.name in {_cel_list(USER_ENV)} || !("
                           + " || ".join(f"self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES) + "))",
                       "is set by fedtask (HOME, TMPDIR, PYTHONUNBUFFERED, FEDTASK_*, AWS_*; FEDTASK_TORCH_THREADS "
                       "may be set): choose another name", ".name", lambda e: not reserved_env(e.name)),
        CrossFieldRule((), "!has(self.valueFrom) || self.value == ''", "must be empty when valueFrom is set",
                       ".value", lambda e: e.value_from is None or e.value == ""),
    ],
    EnvVarSource: [
        CrossFieldRule((), "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                       "set exactly one of secretKeyRef and configMapKeyRef", "",
                       lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None)),
    ],
    Volume: [
        CrossFieldRule((), f"!(self.name in {_cel_list(RESERVED_VOLUMES)})",
                       "is a volume fedtask mounts (tmp, home, data, models): choose another name", ".name",
                       lambda v: v.name not in RESERVED_VOLUMES),
        CrossFieldRule((), "(has(self.configMap) ? 1 : 0) + (has(self.secret) ? 1 : 0) + "
                           "(has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.emptyDir) ? 1 : 0) == 1",
                       "set exactly one of configMap, secret, persistentVolumeClaim and emptyDir", "",
                       lambda v: [v.config_map, v.secret, v.persistent_volume_claim, v.empty_dir].count(None) == 3),
    ],
    VolumeMount: [
        CrossFieldRule((), f"!(self.mountPath in {_cel_list(RESERVED_MOUNT_PATHS)})",
                       "is a path fedtask uses (/tmp, /home, /home/fedtask, /data, /models, /dev): choose another",
                       ".mountPath", lambda m: m.mount_path not in RESERVED_MOUNT_PATHS),
    ],
    PodMetadata: [
        CrossFieldRule((), f"self.labels.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}') && "
                           f"!(k in {_cel_list(RESERVED_LABELS)}))",
                       "must not set fedtask.io/* or app.kubernetes.io/managed-by: fedtask sets them and finds its "
                       "pods by them", ".labels", lambda m: not any(reserved_label(k) for k in m.labels)),
        CrossFieldRule((), f"self.annotations.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}'))",
                       "must not set fedtask.io/* annotations: fedtask sets them", ".annotations",
                       lambda m: not any(k.startswith(RESERVED_LABEL_PREFIX) for k in m.annotations)),
    ],
    PodTemplate: [
        CrossFieldRule((), "self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
                       "volume names must differ", ".volumes",
                       lambda t: len({v.name for v in t.volumes}) == len(t.volumes)),
        CrossFieldRule((), "self.volumeMounts.all(m, self.volumes.exists(v, v.name == m.name))",
                       "every mount must name one of podTemplate.volumes", ".volumeMounts",
                       lambda t: {m.name for m in t.volume_mounts} <= {v.name for v in t.volumes}),
        CrossFieldRule((), "self.volumeMounts.all(m, self.volumeMounts.exists_one(n, n.mountPath == m.mountPath))",
                       "mount paths must differ", ".volumeMounts",
                       lambda t: len({m.mount_path for m in t.volume_mounts}) == len(t.volume_mounts)),
    ],
}


# ----------------------------------------------------------------------------------------------------------------
# Decoding with validation


class SpecError(ValueError):
    """Every problem of a manifest, one `path: reason` per line."""

    def __init__(self, errors: list[FieldError] | list[str]):
        self.errors = [e if isinstance(e, FieldError) else FieldError(*str(e).split(": ", 1)) for e in errors]
        super().__init__("\n".join(str(e) for e in self.errors))


PATTERN_HINTS = {
    QUANTITY_PATTERN: "a quantity such as 1, 500m or 2Gi",
    PLUGIN_PATTERN: "a registered name such as mlp, or module:callable",
    CALLABLE_PATTERN: "empty, or module:callable such as mypackage.module:function",
    ABSOLUTE_PATH_PATTERN: "an absolute path",
    DNS_LABEL_PATTERN: "lower-case letters, digits and '-'",
    OPTIONAL_DNS_LABEL_PATTERN: "empty, or lower-case letters, digits and '-'",
    POOL_PATTERN: "empty, or lower-case letters, digits and '-'",
    DNS_SUBDOMAIN_PATTERN: "lower-case letters, digits, '-' and '.'",
    OPTIONAL_DNS_SUBDOMAIN_PATTERN: "empty, or lower-case letters, digits, '-' and '.'",
    ENV_NAME_PATTERN: "letters, digits, '_', '-' and '.', not starting with a digit",
    MOUNT_PATH_PATTERN: "an absolute path without a trailing '/', '.' or '..'",
    SUB_PATH_PATTERN: "a relative path without '.' or '..'",
}
_HARDENED = "fedtask sets it on every pod (hardening) and a template may not change it"
# Fields the API does not have, with why and what to use instead: pod fields a template may not set, and renamed
# fields (the CRD has none of them: an API server reports them unknown).
FORBIDDEN_FIELDS: dict[type, dict[str, str]] = {
    TaskSpec: {"backoffLimit": "renamed spec.podRetryLimit: it counts the retries of each pod, not the failed pods of "
                               "the whole task like a Job's backoffLimit"},
    PodTemplate: {
        "securityContext": _HARDENED, "command": _HARDENED, "args": "fedtask sets the worker's arguments",
        "image": "set spec.image", "containers": "fedtask builds the worker container",
        "initContainers": "not supported: put your code in a volume or an image FROM the worker image",
        "hostNetwork": _HARDENED, "hostPID": _HARDENED, "hostIPC": _HARDENED,
        "automountServiceAccountToken": _HARDENED, "serviceAccountName": "set spec.serviceAccountName",
        "priorityClassName": "set spec.priorityClassName", "imagePullSecrets": "set spec.imagePullSecrets",
        "resources": "set spec.devices.resources (train pods) or spec.server.resources (server-side pods)",
        "tolerations": "set spec.devices.tolerations (train and publish pods) or spec.server.tolerations",
        "nodeSelector": "set spec.devices.selector (train pods) or spec.server.nodeSelector",
        "affinity": "fedtask pins train pods to their devices' nodes; set spec.server.nodeSelector for the others",
        "restartPolicy": "fedtask retries failed pods itself (spec.podRetryLimit)",
    },
    Volume: {"hostPath": "host folders are not allowed in task pods (Pod Security baseline); use a "
                         "persistentVolumeClaim"},
}
DECODER = Decoder(TYPE_RULES, PATTERN_HINTS, FORBIDDEN_FIELDS)


def validate_spec_rules(spec: TaskSpec) -> list[FieldError]:
    errors = []
    for rule in CROSS_FIELD_RULES:
        if not rule.transition and not rule.check(value_at(spec, rule.at)):
            errors.append(FieldError(_rule_path(rule), rule.message_for(value_at(spec, rule.at))))
    return errors


def validate_update(old: TaskSpec, new: TaskSpec) -> list[FieldError]:
    """What an API server refuses when a task's spec changes from `old` to `new` (the CRD's transition rules)."""
    errors = immutable_changes(old, new, "spec", IMMUTABLE_MESSAGE)
    errors += [FieldError(_rule_path(rule), rule.message) for rule in CROSS_FIELD_RULES
               if rule.transition and not rule.check(value_at(old, rule.at), value_at(new, rule.at))]
    return errors


def _rule_path(rule: CrossFieldRule) -> str:
    return "spec" + "".join("." + camel_case(a) for a in rule.at) + rule.field_path


# ----------------------------------------------------------------------------------------------------------------
# The task


@dataclass
class FederatedTask:
    name: str
    namespace: str
    uid: str
    spec: TaskSpec
    status: TaskStatus
    generation: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    raw: KubeObject = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def owner_reference(self) -> KubeObject:
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def parse_spec(data: Any, path: str = "spec") -> TaskSpec:
    """Decode and validate a spec (as a cluster would: defaults, bounds, enums, unknown fields, CEL rules)."""
    errors: list[FieldError] = []
    spec = DECODER.decode(TaskSpec, {} if data is None else data, path, errors)
    if not errors:
        errors = validate_spec_rules(spec)
    if errors:
        raise SpecError(errors)
    return spec


def status_from_dict(data: Any) -> TaskStatus:
    """Decode a status as written by the planner; unknown fields are ignored (an API server prunes them)."""
    errors: list[FieldError] = []
    status = DECODER.decode(TaskStatus, data or {}, "status", errors, strict=False)
    if errors:
        raise SpecError(errors)
    return status


def status_to_dict(status: TaskStatus) -> TaskStatusDict:
    # encode() gives TaskStatus's JSON form, which TaskStatusDict describes (tests/unit/test_status_types.py)
    return cast(TaskStatusDict, encode(status))


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """The spec with every default filled in, as the API server stores it."""
    encoded: dict[str, Any] = encode(spec)
    return encoded


def parse_task(obj: Any) -> FederatedTask:
    """A FederatedTask from its Kubernetes object; raises SpecError listing every problem with its field path."""
    if not isinstance(obj, dict):
        raise SpecError([FieldError("<document>", f"must be an object, not {type(obj).__name__}")])
    errors: list[FieldError] = []
    if obj.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}, not {obj.get('apiVersion')!r}"))
    if obj.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND}, not {obj.get('kind')!r}"))
        raise SpecError(errors)  # another kind of object: its fields mean nothing here
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
        errors.append(FieldError("metadata", "must be an object with a name"))
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "required"))
        name = ""
    elif len(name) > 253 or not re.match(DNS_SUBDOMAIN_PATTERN, name):
        errors.append(FieldError("metadata.name", f"invalid name {name!r} (lower-case letters, digits, '-' and '.', "
                                                  "at most 253 characters)"))
    namespace = metadata.get("namespace") or "default"
    if not isinstance(namespace, str) or not re.match(DNS_LABEL_PATTERN, namespace) or len(namespace) > 63:
        errors.append(FieldError("metadata.namespace", f"invalid namespace {namespace!r}"))
    for key in obj:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            errors.append(FieldError(key, "unknown field"))
    spec_data = obj.get("spec")
    spec = TaskSpec()
    if spec_data is not None and not isinstance(spec_data, dict):
        errors.append(FieldError("spec", f"must be an object, not {type(spec_data).__name__}"))
    else:
        try:
            spec = parse_spec(spec_data)
        except SpecError as exc:
            errors.extend(exc.errors)
    status = TaskStatus()
    try:
        status = status_from_dict(obj.get("status"))
    except SpecError as exc:
        errors.extend(exc.errors)
    if errors:
        raise SpecError(errors)
    return FederatedTask(name=name, namespace=namespace, uid=str(metadata.get("uid") or ""), spec=spec,
                         status=status, generation=int(metadata.get("generation") or 0),
                         labels=dict(metadata.get("labels") or {}), raw=obj)


def with_defaults(obj: KubeObject) -> KubeObject:
    """A copy of a valid FederatedTask object with every spec default filled in."""
    task = parse_task(obj)
    out = copy.deepcopy(obj)
    out["spec"] = spec_to_dict(task.spec)
    return out
