"""Which store objects a task may name (pure): its own namespace's prefix, or what the operator allows.

Every object of a task lives under `<storeBase>/<namespace>/<task>/<uid>/` (naming.store_base). A task's inputs from
the store, `spec.model.initialUri` and `spec.data.shared.uri`, may name only objects under its own namespace's prefix
`<storeBase>/<namespace>/` or under a prefix of the operator's allowlist (`--store-uri-allow`, e.g. a bucket of
public base models); any other `s3://` URI makes the spec invalid (the planner fails the task with InvalidSpec
before a pod starts). With per-namespace credentials (`--namespace-credentials`) the store enforces the same line
(kube/credentials.py): this check only turns the store's AccessDenied into a clear reason before anything runs.
With presigned URLs (`--presigned-urls`) the operator signs only the objects `pod_store_grants` finds in a pod's
command, so the same check keeps it from signing reads of another namespace's objects for a task.

URIs other than `s3://` are files in the pod's own filesystem (its image and volumes), not the store. The local
runtime (`fedtask run`, a `file://` store) is not checked.
"""
from __future__ import annotations

from fedtask_operator.core.kube_types import KubeObject
from fedtask_operator.core.naming import STAGE_TRAIN, store_base, store_root
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.spec import FederatedTask

NAMESPACE_SECRET = "fedtask-store-credentials"  # the operator's Secret of a namespace's store keys (per namespace)


def namespace_prefix(task: FederatedTask, config: RuntimeConfig) -> str:
    """`s3://bucket[/prefix]/<namespace>/`: where every object of the task's namespace lives."""
    return f"{store_root(task, config)}/{task.namespace}/"


def _clean(uri: str) -> bool:
    """No empty, `.` or `..` key segment and no backslash: a key means what it says to every layer on the way."""
    key = uri[len("s3://"):]
    return "\\" not in key and all(part not in ("", ".", "..") for part in key.split("/"))


def _within(uri: str, prefix: str) -> bool:
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return uri.startswith(prefix) and len(uri) > len(prefix)


def store_uri_errors(task: FederatedTask, config: RuntimeConfig) -> list[str]:
    """`path: reason` for each store input of the task outside what it may read, and for storage settings the
    per-namespace credentials cannot serve; empty when all is well (and always for a local runtime)."""
    if config.local_store:
        return []
    errors: list[str] = []
    own = namespace_prefix(task, config)
    allowed = (own, *config.allowed_uri_prefixes)
    for path, uri in (("spec.model.initialUri", task.spec.model.initial_uri),
                      ("spec.data.shared.uri", task.spec.data.shared.uri)):
        if not uri or not uri.startswith("s3://"):
            continue
        if not _clean(uri):
            errors.append(f"{path}: {uri!r} has an empty, '.' or '..' segment or a backslash in its key")
        elif not any(_within(uri, prefix) for prefix in allowed):
            others = (f" or under the operator's allowed prefixes ({', '.join(config.allowed_uri_prefixes)})"
                      if config.allowed_uri_prefixes else "")
            errors.append(f"{path}: {uri!r} is outside this task's namespace: a task may read store objects only "
                          f"under {own}{others}; copy the object there, or ask the operator's admin to allow its "
                          "prefix (--store-uri-allow)")
    storage = task.spec.storage
    if (config.namespace_credentials or config.presigned_urls) and storage.secret_ref is None:
        for path, value in (("spec.storage.bucket", storage.bucket), ("spec.storage.prefix", storage.prefix),
                            ("spec.storage.endpoint", storage.endpoint)):
            if value:
                errors.append(f"{path}: the operator gives pods access (per-namespace credentials or presigned "
                              f"URLs) only to its own store ({own}); to use another bucket, prefix or endpoint, "
                              "name a Secret with your own credentials in spec.storage.secretRef")
    return errors


# --------------------------------------------------------------------------------------------------------------------
# Per-pod grants (presigned URLs, RuntimeConfig.presigned_urls): which store objects one pod reads and writes


# The worker flags (fedtask_worker stages) that name a store object the stage reads or writes; every other flag's
# value is not a store object (a local path, a number, JSON). Positional arguments are the aggregate's updates (read).
READ_FLAGS = frozenset({"--global", "--initial-uri", "--input", "--base", "--state-in", "--shared-uri"})
WRITE_FLAGS = frozenset({"--output", "--state-out"})
SWITCH_FLAGS = frozenset({"--no-adjust"})  # flags without a value
MAX_GRANT_SECONDS = 7 * 24 * 3600  # SigV4's longest presigned URL
GRANT_MARGIN_SECONDS = 600  # past the planner's own deadline for the pod: it gives up on the pod before its URLs end


def uses_presigned_urls(task: FederatedTask, config: RuntimeConfig) -> bool:
    """Whether the operator gives this task's pods presigned URLs (and no store credentials)."""
    return config.presigned_urls and not config.local_store and task.spec.storage.secret_ref is None


def pod_store_grants(pod: KubeObject) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(objects read, objects written): the `s3://` URIs a worker pod's command names, each once, in order."""
    containers = (pod.get("spec") or {}).get("containers") or []
    args = list(containers[0].get("args") or []) if containers else []
    reads: dict[str, None] = {}
    writes: dict[str, None] = {}
    index = 1  # args[0] is the stage
    while index < len(args):
        item = str(args[index])
        if item in SWITCH_FLAGS:
            index += 1
            continue
        if item.startswith("--"):
            value = str(args[index + 1]) if index + 1 < len(args) else ""
            if value.startswith("s3://"):
                if item in READ_FLAGS:
                    reads[value] = None
                elif item in WRITE_FLAGS:
                    writes[value] = None
            index += 2
            continue
        if item.startswith("s3://"):
            reads[item] = None
        index += 1
    return tuple(reads), tuple(writes)


def grant_seconds(task: FederatedTask, stage: str) -> int:
    """How long a pod's URLs last from its creation: past the planner's deadline for that pod (a train pod's round
    fails at twice rounds.timeoutSeconds from its start; the other stages' pods are replaced after
    stageTimeoutSeconds) by GRANT_MARGIN_SECONDS, and at most 7 days (SigV4's limit)."""
    spec = task.spec
    deadline = 2 * spec.rounds.timeout_seconds if stage == STAGE_TRAIN else spec.stage_timeout_seconds
    return min(MAX_GRANT_SECONDS, deadline + GRANT_MARGIN_SECONDS)


def access_manifest_uri(task: FederatedTask, config: RuntimeConfig, pod_name: str) -> str:
    """Where the operator writes a pod's access manifest (its URLs, when too many for the environment)."""
    return f"{store_base(task, config)}/access/{pod_name}.json"
