"""Which store objects a task may name (pure): its own namespace's prefix, or what the operator allows.

Every object of a task lives under `<storeBase>/<namespace>/<task>/<uid>/` (naming.store_base). A task's inputs from
the store, `spec.model.initialUri` and `spec.data.shared.uri`, may name only objects under its own namespace's prefix
`<storeBase>/<namespace>/` or under a prefix of the operator's allowlist (`--store-uri-allow`, e.g. a bucket of
public base models); any other `s3://` URI makes the spec invalid (the planner fails the task with InvalidSpec
before a pod starts). With per-namespace credentials (`--namespace-credentials`) the store enforces the same line
(kube/credentials.py): this check only turns the store's AccessDenied into a clear reason before anything runs.

URIs other than `s3://` are files in the pod's own filesystem (its image and volumes), not the store. The local
runtime (`fedtask run`, a `file://` store) is not checked.
"""
from __future__ import annotations

from fedtask_operator.core.naming import store_root
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
    if config.namespace_credentials and storage.secret_ref is None:
        for path, value in (("spec.storage.bucket", storage.bucket), ("spec.storage.prefix", storage.prefix),
                            ("spec.storage.endpoint", storage.endpoint)):
            if value:
                errors.append(f"{path}: the operator issues per-namespace store credentials only for its own store "
                              f"({own}); to use another bucket, prefix or endpoint, name a Secret with your own "
                              "credentials in spec.storage.secretRef")
    return errors
