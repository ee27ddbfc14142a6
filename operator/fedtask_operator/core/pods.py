"""Pod manifests for every stage of a FederatedTask (pure).

Every builder returns a whole Pod dict: the worker command with its flags (docs/internals.md), store settings in the
environment (credentials only as `secretKeyRef`, or none: the operator adds presigned URLs when it creates the pod),
labels, owner reference, resources, node pinning through required node affinity (kube-scheduler still enforces
resources and taints), and a hardened security context. The local
runtime runs these very manifests as processes, so everything a stage needs is in command/args/env/volumes.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedtask_operator import __version__
from fedtask_operator.core import naming
from fedtask_operator.core.confinement import Confinement, confined_host_path
from fedtask_operator.core.kube_types import KubeObject
from fedtask_operator.core.quantities import to_milli
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.schema import encode
from fedtask_operator.core.spec import FederatedTask, ResourceRequirements, Toleration, is_overcommit_forbidden

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
CONTAINER_NAME = "worker"
DATA_MOUNT = "/data"
MODELS_MOUNT = "/models"
TMP_MOUNT = "/tmp"
HOME_MOUNT = "/home/fedtask"
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
STATEFUL_STRATEGIES = ("fedavgm", "fedadam")
# The worker image of this version: the operator's default (--image) and the chart's (operator.workerImage empty:
# ghcr.io/fedtask/worker:<appVersion>; tests/chart checks they agree).
WORKER_REPOSITORY = "ghcr.io/fedtask/worker"
DEFAULT_WORKER_IMAGE = f"{WORKER_REPOSITORY}:{__version__}"


@dataclass(frozen=True)
class RuntimeConfig:
    """What the runtime (operator or `fedtask run`) decides for every task's pods."""

    image: str = DEFAULT_WORKER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    store_base_uri: str = "s3://fedtask/tasks"  # or file:///DIR/store locally
    s3_endpoint: str = ""  # host:port
    s3_secure: bool = False
    s3_region: str = ""
    credentials_secret: str = ""  # a Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read via secretKeyRef
    worker_command: tuple[str, ...] = ("python", "-m", "fedtask_worker")
    namespace: str = "default"  # the runtime's own namespace (tasks' pods go to their task's namespace)
    store_retry_seconds: float | None = None  # FEDTASK_STORE_RETRY_SECONDS for the stages; None: worker default
    run_as_user: int = 10001
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # e.g. (("OMP_NUM_THREADS", "1"),)
    keep_finished_pods: bool = False  # cleanPodPolicy None: finished pods stay (for inspection) until the task goes
    confinement: Confinement = field(default_factory=Confinement)  # host paths, tolerations, ... (core/confinement.py)
    # Store access (core/store_access.py): prefixes besides the task's own namespace that initialUri/shared.uri may
    # name, and whether the operator issues per-namespace credentials (then `credentials_secret` is their Secret).
    allowed_uri_prefixes: tuple[str, ...] = ()
    namespace_credentials: bool = False
    # Per-pod presigned URLs (core/store_access.py, kube/presign.py): pods of tasks without spec.storage.secretRef
    # get no store credentials at all, only URLs for the objects their stage reads and writes.
    presigned_urls: bool = False

    @property
    def local_store(self) -> bool:
        return not self.store_base_uri.startswith("s3://")


# --------------------------------------------------------------------------------------------------------------------
# Flags


ARGUMENT_BYTES = 64 * 1024  # Linux refuses one argument over 128 KiB (MAX_ARG_STRLEN)


def _comma_joined(items: Sequence[str], limit: int = ARGUMENT_BYTES) -> list[str]:
    """`items` joined by commas into as few arguments as keep each under `limit` characters."""
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for item in items:
        if current and length + 1 + len(item) > limit:
            chunks.append(",".join(current))
            current, length = [], 0
        current.append(item)
        length += len(item) + (1 if length else 0)
    if current:
        chunks.append(",".join(current))
    return chunks


def _number(value: float | int) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _common_flags(task: FederatedTask, stage: str, round_: int,
                  result_file: str = TERMINATION_MESSAGE_PATH) -> list[str]:
    return [stage, "--task", task.name, "--round", str(round_), "--result-file", result_file]


def _model_data_flags(task: FederatedTask) -> list[str]:
    spec = task.spec
    return ["--model", spec.model.name, "--model-args", _json(spec.model.args),
            "--dataset", spec.data.dataset, "--dataset-args", _json(spec.data.args),
            "--seed", str(spec.model.seed)]


def _user_code_flags(task: FederatedTask, evaluation: bool = False) -> list[str]:
    """The user's own train step (train, adjust) and evaluation function (adjust), when the spec names them."""
    flags = ["--train-step", task.spec.training.step] if task.spec.training.step else []
    if evaluation and task.spec.evaluation.function:
        flags += ["--eval-function", task.spec.evaluation.function]
    return flags


# --------------------------------------------------------------------------------------------------------------------
# Pod pieces


def _quantities(values: Mapping[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in values.items()}


def _resources(resources: ResourceRequirements) -> KubeObject:
    """requests/limits as quantities; a non-overcommitable resource given only as a request gets the same limit
    (and one given only as a limit the same request, as the API server's defaulting would)."""
    requests = _quantities(resources.requests)
    limits = _quantities(resources.limits)
    for name, value in list(requests.items()):
        if is_overcommit_forbidden(name):
            limits.setdefault(name, value)
    for name, value in list(limits.items()):
        if is_overcommit_forbidden(name):
            requests.setdefault(name, value)
    out: KubeObject = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def build_store_env(task: FederatedTask, config: RuntimeConfig) -> list[KubeObject]:
    """Store settings for the worker; credentials only as references to a Secret."""
    env: list[KubeObject] = []
    if not config.local_store:
        storage = task.spec.storage
        env.append({"name": "FEDTASK_S3_ENDPOINT", "value": storage.endpoint or config.s3_endpoint})
        env.append({"name": "FEDTASK_S3_SECURE", "value": "true" if config.s3_secure else "false"})
        if config.s3_region:
            env.append({"name": "FEDTASK_S3_REGION", "value": config.s3_region})
        secret = storage.secret_ref.name if storage.secret_ref is not None else config.credentials_secret
        if storage.secret_ref is None and config.presigned_urls:
            secret = ""  # the operator adds the pod's presigned URLs when it creates the pod (kube/presign.py)
        if secret:
            for key in (ACCESS_KEY_ENV, SECRET_KEY_ENV):
                env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    if config.store_retry_seconds is not None:
        env.append({"name": "FEDTASK_STORE_RETRY_SECONDS", "value": _number(config.store_retry_seconds)})
    return env


THREAD_ENV = ("OMP_NUM_THREADS", "FEDTASK_TORCH_THREADS")  # OpenMP/BLAS threads and torch's intra-op threads


def cpu_threads(resources: ResourceRequirements | None) -> int | None:
    """The threads a worker should use: its CPU request (else its limit) rounded up, at least 1; None without
    either (the worker's default, 1 thread, applies)."""
    if resources is None:
        return None
    value = resources.requests.get("cpu", resources.limits.get("cpu"))
    if value is None:
        return None
    return max(1, -(-to_milli(value) // 1000))


def _base_env(task: FederatedTask, config: RuntimeConfig,
              resources: ResourceRequirements | None = None) -> list[KubeObject]:
    env: list[KubeObject] = [
        {"name": "HOME", "value": HOME_MOUNT},
        {"name": "TMPDIR", "value": TMP_MOUNT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env += build_store_env(task, config)
    env += [{"name": name, "value": value} for name, value in config.extra_env]
    threads = cpu_threads(resources)
    if threads is not None:  # a pod that requests cpu: 4 trains on 4 threads (unless the runtime or template says)
        given = {name for name, _ in config.extra_env} | {var.name for var in task.spec.pod_template.env}
        env += [{"name": name, "value": str(threads)} for name in THREAD_ENV if name not in given]
    for var in task.spec.pod_template.env:  # after fedtask's own: validation keeps it off the names those use
        item: KubeObject = {"name": var.name}
        if var.value_from is not None:
            item["valueFrom"] = encode(var.value_from)
        else:
            item["value"] = var.value
        env.append(item)
    return env


def _template_volumes(task: FederatedTask) -> tuple[list[KubeObject], list[KubeObject]]:
    """spec.podTemplate's volumes and the worker container's mounts of them."""
    template = task.spec.pod_template
    volumes: list[KubeObject] = [encode(volume) for volume in template.volumes]
    mounts: list[KubeObject] = []
    for mount in template.volume_mounts:
        item: KubeObject = {"name": mount.name, "mountPath": mount.mount_path}
        if mount.sub_path:
            item["subPath"] = mount.sub_path
        if mount.read_only:
            item["readOnly"] = True
        mounts.append(item)
    return volumes, mounts


def _node_affinity(node: str) -> KubeObject:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": naming.HOSTNAME_LABEL, "operator": "In", "values": [node]}]}]}}}


def _tolerations(task: FederatedTask, tolerations: list[Toleration] | None = None) -> list[KubeObject]:
    """Train and publish pods get spec.devices.tolerations; `tolerations` (the server-side pods') instead."""
    out = []
    for toleration in task.spec.devices.tolerations if tolerations is None else tolerations:
        item: KubeObject = {"operator": toleration.operator}
        if toleration.key:
            item["key"] = toleration.key
        if toleration.value:
            item["value"] = toleration.value
        if toleration.effect:
            item["effect"] = toleration.effect
        if toleration.toleration_seconds is not None:
            item["tolerationSeconds"] = toleration.toleration_seconds
        out.append(item)
    return out


CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


def _pod_security_context(config: RuntimeConfig) -> KubeObject:
    return {"runAsNonRoot": True, "runAsUser": config.run_as_user, "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user, "seccompProfile": {"type": "RuntimeDefault"}}


def build_pod(task: FederatedTask, config: RuntimeConfig, *, name: str, labels: dict[str, str], args: list[str],
              resources: ResourceRequirements | None = None, node: str | None = None,
              tolerations: list[KubeObject] | None = None, volumes: Sequence[KubeObject] = (),
              mounts: Sequence[KubeObject] = (), node_selector: Mapping[str, str] | None = None) -> KubeObject:
    """A whole worker Pod: the parts every stage shares, plus the stage's own, plus spec.podTemplate's additions
    (validation keeps those off everything fedtask sets: labels, variables, volumes, mount paths)."""
    spec = task.spec
    template = spec.pod_template
    template_volumes, template_mounts = _template_volumes(task)
    container = {
        "name": CONTAINER_NAME,
        "image": spec.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(config.worker_command),
        "args": args,
        "env": _base_env(task, config, resources),
        "resources": _resources(resources) if resources is not None else {},
        "volumeMounts": [{"name": "tmp", "mountPath": TMP_MOUNT}, {"name": "home", "mountPath": HOME_MOUNT},
                         *mounts, *template_mounts],
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(config),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}, *volumes, *template_volumes],
    }
    if node is not None:
        pod_spec["affinity"] = _node_affinity(node)
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if template.runtime_class_name:
        pod_spec["runtimeClassName"] = template.runtime_class_name
    if template.scheduler_name:
        pod_spec["schedulerName"] = template.scheduler_name
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": ref.name} for ref in spec.image_pull_secrets]
    metadata: KubeObject = {
        "name": name,
        "namespace": task.namespace,
        "labels": {**template.metadata.labels, **labels},
        "ownerReferences": [task.owner_reference()],
    }
    if template.metadata.annotations:
        metadata["annotations"] = dict(template.metadata.annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def server_resources(task: FederatedTask) -> ResourceRequirements:
    """The server-side pods' resources: spec.server.resources, else the deprecated spec.adjustment.resources."""
    server = task.spec.server.resources
    return server if server.requests or server.limits else task.spec.adjustment.resources


def _server_pod(task: FederatedTask, config: RuntimeConfig, *, name: str, labels: dict[str, str],
                args: list[str]) -> KubeObject:
    """An init, aggregate or adjust pod: spec.server's resources, nodeSelector and tolerations."""
    server = task.spec.server
    return build_pod(task, config, name=name, labels=labels, args=args, resources=server_resources(task),
                     tolerations=_tolerations(task, server.tolerations), node_selector=server.node_selector)


# --------------------------------------------------------------------------------------------------------------------
# Stages


def build_init_pod(task: FederatedTask, config: RuntimeConfig, attempt: int = 0) -> KubeObject:
    base = naming.store_base(task, config)
    args = _common_flags(task, naming.STAGE_INIT, 0)
    args += ["--output", naming.global_uri(base, 0)]
    if task.spec.model.initial_uri:
        args += ["--initial-uri", task.spec.model.initial_uri]
    args += _model_data_flags(task)
    return _server_pod(task, config, name=naming.init_pod_name(task.name, attempt),
                       labels=naming.pod_labels(task.name, naming.STAGE_INIT, 0), args=args)


def shard_count(task: FederatedTask) -> int | None:
    """The number of simulated devices: spec.devices.count, else what the planner resolved into status."""
    return task.spec.devices.count if task.spec.devices.count is not None else task.status.shard_count


def _data_volume(task: FederatedTask, node: str) -> KubeObject:
    data = task.spec.data
    if data.source == "hostPath":
        # only the task's own subdirectory: <hostPath>/<namespace>/<task> (issue 12), never the directory itself
        path = confined_host_path(data.host_path, task.namespace, task.name)
        return {"name": "data", "hostPath": {"path": path, "type": "Directory"}}
    return {"name": "data", "persistentVolumeClaim": {"claimName": data.claim_name.replace("{node}", node),
                                                      "readOnly": True}}


def build_train_pod(task: FederatedTask, config: RuntimeConfig, round_: int, slot: DeviceSlot,
                    attempt: int = 0) -> KubeObject:
    spec = task.spec
    base = naming.store_base(task, config)
    args = _common_flags(task, naming.STAGE_TRAIN, round_)
    args += ["--global", naming.global_uri(base, round_ - 1),
             "--output", naming.update_uri(base, round_, slot.device)]
    volumes: list[KubeObject] = []
    mounts: list[KubeObject] = []
    if spec.data.source == "builtin":
        index = naming.shard_index(slot.device)
        count = shard_count(task)
        if index is None or count is None:
            raise ValueError(f"{task.key}: builtin data needs shard devices (d000...) and a device count, "
                             f"got device {slot.device!r} and count {count!r}")
        partition = spec.data.partition
        args += ["--data-source", "builtin",
                 "--partition", partition.scheme, "--alpha", _number(partition.alpha),
                 "--classes-per-device", str(partition.classes_per_device),
                 "--partition-seed", str(partition.seed),
                 "--device-index", str(index), "--device-count", str(count),
                 "--shared-fraction", _number(spec.data.shared.fraction)]
        if spec.shared_to_devices > 0:
            args += ["--shared-to-devices", _number(spec.shared_to_devices)]
    else:
        volumes.append(_data_volume(task, slot.node))
        mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
        args += ["--data-source", "dir", "--data-dir", DATA_MOUNT]
    training = spec.training
    args += ["--local-epochs", str(training.local_epochs), "--batch-size", str(training.batch_size),
             "--learning-rate", _number(training.learning_rate), "--optimizer", training.optimizer,
             "--momentum", _number(training.momentum), "--weight-decay", _number(training.weight_decay),
             "--proximal-mu", _number(training.proximal_mu)]
    args += _model_data_flags(task) + _user_code_flags(task)
    labels = naming.pod_labels(task.name, naming.STAGE_TRAIN, round_, slot.device)
    if spec.devices.pool:  # the scheduler sees which devices of a shared pool train (scheduling/fleet.py)
        labels[naming.POOL_LABEL] = spec.devices.pool
    return build_pod(task, config, name=naming.train_pod_name(task.name, round_, slot.device, attempt),
                     labels=labels, args=args,
                     resources=spec.devices.resources, node=slot.node, tolerations=_tolerations(task),
                     volumes=volumes, mounts=mounts)


def build_aggregate_pod(task: FederatedTask, config: RuntimeConfig, round_: int, update_uris: list[str],
                        attempt: int = 0, sample_caps: Mapping[str, int] | None = None) -> KubeObject:
    """`sample_caps`: device -> the most num_samples its update may claim (what the planner knows of it)."""
    aggregation = task.spec.aggregation
    base = naming.store_base(task, config)
    args = _common_flags(task, naming.STAGE_AGGREGATE, round_)
    args += ["--output", naming.aggregate_uri(base, round_),
             "--strategy", aggregation.strategy,
             "--base", naming.global_uri(base, round_ - 1),
             "--on-invalid", aggregation.on_invalid]
    if aggregation.strategy in STATEFUL_STRATEGIES:
        if round_ > 1:
            args += ["--state-in", naming.server_state_uri(base, round_ - 1)]
        args += ["--state-out", naming.server_state_uri(base, round_)]
    args += ["--server-learning-rate", _number(aggregation.server_learning_rate),
             "--server-momentum", _number(aggregation.server_momentum),
             "--trim-fraction", _number(aggregation.trim_fraction),
             "--byzantine", str(aggregation.byzantine)]
    if aggregation.max_samples_per_update is not None:
        args += ["--max-samples", str(aggregation.max_samples_per_update)]
    for caps in _comma_joined([f"{device}={cap}" for device, cap in sorted((sample_caps or {}).items())]):
        args += ["--sample-caps", caps]
    if aggregation.clip_norm is not None:
        args += ["--clip-norm", _number(aggregation.clip_norm)]
    args += list(update_uris)
    return _server_pod(task, config, name=naming.aggregate_pod_name(task.name, round_, attempt),
                       labels=naming.pod_labels(task.name, naming.STAGE_AGGREGATE, round_), args=args)


def build_adjust_pod(task: FederatedTask, config: RuntimeConfig, round_: int, attempt: int = 0,
                     teacher_uris: Sequence[str] = ()) -> KubeObject:
    """`teacher_uris`: the round's accepted updates, read with adjustment.distillation > 0 (FedDF's ensemble)."""
    spec = task.spec
    adjustment = spec.adjustment
    base = naming.store_base(task, config)
    args = _common_flags(task, naming.STAGE_ADJUST, round_)
    args += ["--input", naming.aggregate_uri(base, round_), "--output", naming.global_uri(base, round_)]
    if not adjustment.enabled:
        args.append("--no-adjust")
    args += ["--epochs", str(adjustment.epochs), "--batch-size", str(adjustment.batch_size),
             "--learning-rate", _number(adjustment.learning_rate),
             "--shared-fraction", _number(spec.data.shared.fraction)]
    if adjustment.learning_rate_decay != 1:
        args += ["--learning-rate-decay", _number(adjustment.learning_rate_decay)]
    if spec.data.shared.uri:
        args += ["--shared-uri", spec.data.shared.uri]
    args += _model_data_flags(task) + _user_code_flags(task, evaluation=True)
    if adjustment.enabled and adjustment.distillation > 0:
        args += ["--distill", _number(adjustment.distillation), *teacher_uris]
    return _server_pod(task, config, name=naming.adjust_pod_name(task.name, round_, attempt),
                       labels=naming.pod_labels(task.name, naming.STAGE_ADJUST, round_), args=args)


def build_publish_pod(task: FederatedTask, config: RuntimeConfig, node: str, model_uri: str,
                      attempt: int = 0) -> KubeObject:
    """Copies the final model to `publish.hostPath` on one device node."""
    round_ = task.status.round or 0
    args = _common_flags(task, naming.STAGE_PUBLISH, round_)
    args += ["--input", model_uri,
             "--output", f"{MODELS_MOUNT}/{naming.MODEL_FILENAME}"]
    # only the task's own subdirectory (naming.published_model_path on the node), not every tenant's models
    host_dir = confined_host_path(task.spec.publish.host_path, task.namespace, task.name)
    volumes = [{"name": "models", "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}}]
    mounts = [{"name": "models", "mountPath": MODELS_MOUNT}]
    return build_pod(task, config, name=naming.publish_pod_name(task.name, node, attempt),
                     labels=naming.pod_labels(task.name, naming.STAGE_PUBLISH, device=node), args=args,
                     node=node, tolerations=_tolerations(task), volumes=volumes, mounts=mounts)
