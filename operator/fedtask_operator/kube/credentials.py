"""Per-namespace store credentials (`--namespace-credentials`): the root credentials stay with the operator.

For every namespace that runs tasks, the operator (which holds the store's root credentials) makes a MinIO user
`fedtask-ns-<namespace>` with a policy of the same name that allows, in the operator's bucket, only

- GetObject / PutObject / DeleteObject on `<bucket>/<prefix>/<namespace>/*` (every key of the namespace's tasks,
  `core.naming.store_base`: `<storeBase>/<namespace>/<task>/<uid>/...`),
- ListBucket with the condition `s3:prefix` like `<prefix>/<namespace>/*` (listing a round's updates),
- GetBucketLocation (the region; no key names),

and writes the user's keys into the Secret `fedtask-store-credentials` of that namespace, which the task's pods read
through `secretKeyRef`. The Secret is the operator's: its keys are reused when it exists (pods that already run keep
working across operator restarts), and the MinIO user and policy are written again (idempotent) once per namespace
and operator process. When a namespace's last task is deleted, the operator removes its Secret, MinIO user and policy
(`NamespaceCredentials.release`). The MinIO admin API (`minio.MinioAdmin`) is the only admin client: no `mc`.
"""
from __future__ import annotations

import secrets
import string

from fedtask_operator.core.store_access import NAMESPACE_SECRET as SECRET_NAME

MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_VALUE = "fedtask-operator"
ACCESS_KEY = "AWS_ACCESS_KEY_ID"
SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
SECRET_KEY_LENGTH = 40


class CredentialsError(Exception):
    """The store refused to create a namespace's user or policy (or could not be reached)."""


def user_name(namespace: str) -> str:
    """The MinIO user (access key) and policy name of a namespace: namespaces are DNS labels, so it is unique."""
    return f"fedtask-ns-{namespace}"


def namespace_prefix(prefix: str, namespace: str) -> str:
    """The key prefix of every object of a namespace's tasks, without a trailing slash."""
    prefix = prefix.strip("/")
    return f"{prefix}/{namespace}" if prefix else namespace


def namespace_policy(bucket: str, prefix: str, namespace: str, readable: tuple[str, ...] = ()) -> dict:
    """The IAM policy of a namespace's user: its own keys only (see the module docstring), plus GetObject under the
    operator's allowlisted `s3://bucket/prefix/` URIs (`--store-uri-allow`: shared base models and datasets)."""
    keys = namespace_prefix(prefix, namespace)
    shared = [f"arn:aws:s3:::{uri[len('s3://'):].rstrip('/')}/*" for uri in readable]
    return {
        "Version": "2012-10-17",
        "Statement": [*([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": shared}] if shared else []),
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": [f"arn:aws:s3:::{bucket}/{keys}/*"]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"],
             "Condition": {"StringLike": {"s3:prefix": [f"{keys}/*"]}}},
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [f"arn:aws:s3:::{bucket}"]},
        ],
    }


def new_secret_key() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(SECRET_KEY_LENGTH))


def store_http_client(timeout: float):
    """The HTTP client of the operator's own calls to the store (namespace users, presigning's bucket check): 5 s to
    connect, `timeout` to read, two quick retries of a failed connection and none on an HTTP status."""
    import urllib3

    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=5.0, read=timeout),
                               retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=()))


def ensure_store_user(endpoint: str, root_access_key: str, root_secret_key: str, secure: bool, region: str,
                      bucket: str, prefix: str, namespace: str, secret_key: str, timeout: float = 30.0,
                      readable: tuple[str, ...] = ()) -> str:
    """Create or update (idempotent) the namespace's MinIO policy and user with `secret_key`, make sure the bucket
    exists (the namespace's user may not create it), and return the user's access key."""
    import minio
    from minio.credentials import StaticProvider

    if not root_access_key or not root_secret_key:
        raise CredentialsError("--namespace-credentials needs the store's root credentials in the operator's "
                               "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if not endpoint:
        raise CredentialsError("--namespace-credentials needs --store-endpoint (the MinIO server)")
    http = store_http_client(timeout)
    name = user_name(namespace)
    try:
        client = minio.Minio(endpoint, access_key=root_access_key, secret_key=root_secret_key, secure=secure,
                             region=region or None, http_client=http)
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket, location=region or None)
        admin = minio.MinioAdmin(endpoint=endpoint, credentials=StaticProvider(root_access_key, root_secret_key),
                                 region=region or "", secure=secure, http_client=http)
        admin.policy_add(name, policy=namespace_policy(bucket, prefix, namespace, readable))
        admin.user_add(name, secret_key)
        admin.policy_set(name, user=name)
    except CredentialsError:
        raise
    except Exception as error:  # minio's admin errors are plain exceptions with the server's message
        message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise CredentialsError(f"store user {name} at {endpoint}: {message}") from None
    return name


def remove_store_user(endpoint: str, root_access_key: str, root_secret_key: str, secure: bool, region: str,
                      namespace: str, timeout: float = 30.0) -> None:
    """Remove the namespace's MinIO user and policy (idempotent: a missing one is fine)."""
    import minio
    from minio.credentials import StaticProvider

    http = store_http_client(timeout)
    name = user_name(namespace)
    admin = minio.MinioAdmin(endpoint=endpoint, credentials=StaticProvider(root_access_key, root_secret_key),
                             region=region or "", secure=secure, http_client=http)
    for remove in (lambda: admin.user_remove(name), lambda: admin.policy_remove(name)):
        try:
            remove()
        except Exception as error:  # minio's admin errors are plain exceptions with the server's message
            message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            if "does not exist" in message or "NoSuch" in message or "not found" in message.lower():
                continue
            raise CredentialsError(f"removing store user {name} at {endpoint}: {message}") from None


class NamespaceCredentials:
    """Issues each task namespace's store keys once per operator process, before the namespace's first pod.

    `ensure(namespace)` returns None when the namespace's Secret and MinIO user are in place, else the reason (the
    reconciler then refuses the task's pod creations with it: a Stalled/PodCreationFailed condition, a Warning event
    and the planner's backoff, and the next creation tries again). The Secret is the source of truth: an existing
    one of ours keeps its keys (MinIO is brought to them), a missing one is created with new keys first. A Secret of
    that name that is not ours is left alone and reported.

    API calls: get and delete (only this Secret's name) and create Secrets in task namespaces; never list, watch or
    update.
    """

    def __init__(self, api_client, store, request_timeout: float = 30.0):
        import asyncio

        import kubernetes

        self._core = kubernetes.client.CoreV1Api(api_client)
        self._exception = kubernetes.client.ApiException
        self._store = store  # StoreAdmin: how to reach MinIO as root
        self._timeout = request_timeout
        self._ready: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, namespace: str) -> str | None:
        import asyncio

        if namespace in self._ready:
            return None
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            if namespace in self._ready:
                return None
            try:
                await asyncio.to_thread(self._issue, namespace)
            except CredentialsError as error:
                return f"store credentials of namespace {namespace} not issued: {error}"
            except self._exception as error:
                return (f"store credentials of namespace {namespace} not issued: Secret {SECRET_NAME}: "
                        f"{error.status} {error.reason}")
            self._ready.add(namespace)
            return None

    async def release(self, namespace: str, still_used) -> str | None:
        """The namespace's last task is gone: delete its Secret (only ours, by name), then its MinIO user and policy,
        unless `still_used()` (asked under the namespace's lock, right before) says a task has come meanwhile.
        Returns None when done (or not needed), else why not (the keys then stay, as before)."""
        import asyncio

        async with self._locks.setdefault(namespace, asyncio.Lock()):
            if still_used():
                return None
            self._ready.discard(namespace)
            try:
                await asyncio.to_thread(self._remove, namespace)
            except CredentialsError as error:
                return f"store credentials of namespace {namespace} not removed: {error}"
            except self._exception as error:
                return (f"store credentials of namespace {namespace} not removed: Secret {SECRET_NAME}: "
                        f"{error.status} {error.reason}")
            return None

    def _remove(self, namespace: str) -> None:
        secret = self._read(namespace)
        if secret is not None:
            labels = secret.get("metadata", {}).get("labels") or {}
            if labels.get(MANAGED_LABEL) != MANAGED_VALUE:
                return  # not ours: neither the Secret nor a user of that name is the operator's to remove
            try:
                self._core.delete_namespaced_secret(SECRET_NAME, namespace, _preload_content=False,
                                                    _request_timeout=self._timeout)
            except self._exception as error:
                if error.status != 404:
                    raise
        self._store.remove_user(namespace)

    def _read(self, namespace: str) -> dict | None:
        import json

        try:
            response = self._core.read_namespaced_secret(SECRET_NAME, namespace, _preload_content=False,
                                                         _request_timeout=self._timeout)
        except self._exception as error:
            if error.status == 404:
                return None
            raise
        return json.loads(response.data or b"{}")

    def _issue(self, namespace: str) -> None:
        import base64

        secret = self._read(namespace)
        if secret is None:
            key = new_secret_key()
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": SECRET_NAME, "labels": {MANAGED_LABEL: MANAGED_VALUE}},
                    "stringData": {ACCESS_KEY: user_name(namespace), SECRET_KEY: key}}
            try:
                self._core.create_namespaced_secret(namespace, body, _preload_content=False,
                                                    _request_timeout=self._timeout)
            except self._exception as error:
                if error.status != 409:  # 409: another replica made it meanwhile: use its keys
                    raise
                secret = self._read(namespace)
        if secret is not None:
            labels = secret.get("metadata", {}).get("labels") or {}
            data = secret.get("data") or {}
            if labels.get(MANAGED_LABEL) != MANAGED_VALUE or SECRET_KEY not in data:
                raise CredentialsError(
                    f"Secret {namespace}/{SECRET_NAME} exists but is not the operator's (label "
                    f"{MANAGED_LABEL}={MANAGED_VALUE} and key {SECRET_KEY} expected): delete or rename it")
            key = base64.b64decode(data[SECRET_KEY]).decode()
        self._store.ensure_user(namespace, key)


class StoreAdmin:
    """The operator's root access to the store (its flags and environment), for `ensure_store_user`."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, secure: bool, region: str, bucket: str,
                 prefix: str, readable: tuple[str, ...] = ()):
        self.endpoint, self.access_key, self.secret_key = endpoint, access_key, secret_key
        self.secure, self.region, self.bucket, self.prefix = secure, region, bucket, prefix
        self.readable = readable  # --store-uri-allow: prefixes every namespace may read

    def ensure_user(self, namespace: str, secret_key: str) -> str:
        return ensure_store_user(self.endpoint, self.access_key, self.secret_key, self.secure, self.region,
                                 self.bucket, self.prefix, namespace, secret_key, readable=self.readable)

    def remove_user(self, namespace: str) -> None:
        remove_store_user(self.endpoint, self.access_key, self.secret_key, self.secure, self.region, namespace)
