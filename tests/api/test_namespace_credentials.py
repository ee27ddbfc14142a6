"""Per-namespace store credentials against the REAL MinIO server (issue 12, least privilege in the store).

The operator's `kube.credentials.ensure_store_user` makes a MinIO user and policy per namespace with the store's root
credentials. Namespace A's keys then read, write, list and delete under `<bucket>/<prefix>/A/` only: B's keys, the
bucket outside A, another bucket and the admin API answer AccessDenied. The worker's own store code runs with A's
keys as a task pod would. A missing `minio` binary fails these tests (tests/support/minio_server.py says how to build
it); `make test-cluster` builds it first.
"""
from __future__ import annotations

import io

import pytest

from fedtask_operator.kube import credentials
from tests.support.minio_server import refused, run_minio_server

pytestmark = pytest.mark.cluster

BUCKET, PREFIX = "fedtask", "tasks"


@pytest.fixture(scope="module")
def minio_root(tmp_path_factory):
    with run_minio_server(tmp_path_factory.mktemp("minio") / "data") as server:
        yield server


def issue(server, namespace: str, secret_key: str | None = None, readable: tuple[str, ...] = ()):
    """Issue `namespace`'s user as the operator does; returns (access key, secret key, a client with them)."""
    import minio

    secret_key = secret_key or credentials.new_secret_key()
    access_key = credentials.ensure_store_user(server.endpoint, server.access_key, server.secret_key, False,
                                               server.region, BUCKET, PREFIX, namespace, secret_key,
                                               readable=readable)
    client = minio.Minio(server.endpoint, access_key=access_key, secret_key=secret_key, secure=False,
                         region=server.region)
    return access_key, secret_key, client


def put(client, key: str, data: bytes = b"payload") -> None:
    client.put_object(BUCKET, key, io.BytesIO(data), len(data))


def get(client, key: str) -> bytes:
    response = client.get_object(BUCKET, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_a_namespace_reads_and_writes_its_own_prefix_and_is_refused_everything_else(minio_root):
    _, _, a = issue(minio_root, "team")
    _, _, b = issue(minio_root, "team-b")  # a namespace whose name starts with A's: the prefix ends at a slash
    own, other = f"{PREFIX}/team/task/uid-1/round-0001/global.safetensors", f"{PREFIX}/team-b/task/uid-2/global"
    put(a, own, b"mine")
    put(b, other, b"theirs")
    assert get(a, own) == b"mine"
    assert a.stat_object(BUCKET, own).size == 4
    assert [o.object_name for o in a.list_objects(BUCKET, prefix=f"{PREFIX}/team/", recursive=True)] == [own]

    assert refused(lambda: get(a, other)) == "AccessDenied"
    assert refused(lambda: a.stat_object(BUCKET, other)) in ("AccessDenied", "Forbidden")  # HEAD has no error body
    assert refused(lambda: put(a, other, b"overwritten")) == "AccessDenied"
    assert refused(lambda: put(a, f"{PREFIX}/team-b/task/uid-2/round-0002/global.safetensors")) == "AccessDenied"
    assert refused(lambda: put(a, "elsewhere/key")) == "AccessDenied"
    assert refused(lambda: list(a.list_objects(BUCKET, prefix=f"{PREFIX}/team-b/", recursive=True))) \
        == "AccessDenied"
    assert refused(lambda: list(a.list_objects(BUCKET, prefix=f"{PREFIX}/", recursive=True))) == "AccessDenied"
    assert refused(lambda: list(a.list_objects(BUCKET, recursive=True))) == "AccessDenied"
    minio_root.client().make_bucket("other")
    assert refused(lambda: a.put_object("other", f"{PREFIX}/team/x", io.BytesIO(b"x"), 1)) == "AccessDenied"
    assert refused(lambda: a.make_bucket("mine")) == "AccessDenied"
    a.remove_object(BUCKET, own)  # deleting its own key: allowed
    # remove_object of B's key is refused, and B's object is still there
    from minio.deleteobjects import DeleteObject

    errors = list(a.remove_objects(BUCKET, [DeleteObject(other)]))
    assert [error.code for error in errors] == ["AccessDenied"]
    assert get(b, other) == b"theirs"


def test_the_operators_allowlist_is_readable_by_every_namespace_and_writable_by_none(minio_root):
    root = minio_root.client()
    if not root.bucket_exists("models"):
        root.make_bucket("models")
    root.put_object("models", "public/base.safetensors", io.BytesIO(b"base"), 4)
    root.put_object("models", "private/secret.safetensors", io.BytesIO(b"secret"), 6)
    _, _, reader = issue(minio_root, "readers", readable=("s3://models/public/",))
    response = reader.get_object("models", "public/base.safetensors")
    assert response.read() == b"base"
    response.close()
    response.release_conn()
    assert refused(lambda: reader.get_object("models", "private/secret.safetensors")) == "AccessDenied"
    assert refused(lambda: reader.put_object("models", "public/base.safetensors", io.BytesIO(b"x"), 1)) \
        == "AccessDenied"
    assert refused(lambda: list(reader.list_objects("models", prefix="public/"))) == "AccessDenied"


def test_the_namespace_keys_cannot_use_the_admin_api(minio_root):
    import minio
    from minio.credentials import StaticProvider

    access_key, secret_key, _ = issue(minio_root, "tenant")
    admin = minio.MinioAdmin(endpoint=minio_root.endpoint, credentials=StaticProvider(access_key, secret_key),
                             secure=False)
    # (MinIO lets a user change its own secret key, which only locks out its own pods: not tried here)
    with pytest.raises(Exception, match="(?i)access ?denied"):
        admin.user_add("fedtask-ns-victim", "a-secret-key-of-my-choosing")
    with pytest.raises(Exception, match="(?i)access ?denied"):
        admin.policy_add("fedtask-ns-tenant", policy=credentials.namespace_policy(BUCKET, "", "*"))
    with pytest.raises(Exception, match="(?i)access ?denied"):
        admin.policy_set("consoleAdmin", user="fedtask-ns-tenant")


def test_issuing_again_is_idempotent_and_a_new_key_replaces_the_old(minio_root):
    key = credentials.new_secret_key()
    _, _, first = issue(minio_root, "again", key)
    _, _, second = issue(minio_root, "again", key)  # an operator restart: the Secret's key is reused
    put(first, f"{PREFIX}/again/t/u/one")
    assert get(second, f"{PREFIX}/again/t/u/one") == b"payload"
    _, _, rotated = issue(minio_root, "again")
    assert get(rotated, f"{PREFIX}/again/t/u/one") == b"payload"
    assert refused(lambda: get(first, f"{PREFIX}/again/t/u/one")) in ("InvalidAccessKeyId", "SignatureDoesNotMatch")


def test_the_worker_store_code_runs_with_the_namespace_keys(minio_root, monkeypatch):
    """A task pod's view: the worker's store functions with A's keys in the environment (the bucket check, which
    A may not make, is skipped on AccessDenied); B's keys are refused with the store's reason."""
    from fedtask_worker import store

    access_key, secret_key, _ = issue(minio_root, "pods")
    issue(minio_root, "victim")
    for name, value in {**minio_root.env, "AWS_ACCESS_KEY_ID": access_key,
                        "AWS_SECRET_ACCESS_KEY": secret_key, "FEDTASK_STORE_RETRY_SECONDS": "1"}.items():
        monkeypatch.setenv(name, value)
    base = f"s3://{BUCKET}/{PREFIX}/pods/task/uid"
    store.write_bytes(f"{base}/round-0001/updates/d0.safetensors", b"update")
    assert store.read_bytes(f"{base}/round-0001/updates/d0.safetensors") == b"update"
    assert store.list_objects(f"{base}/round-0001/updates") == [f"{base}/round-0001/updates/d0.safetensors"]
    victim = f"s3://{BUCKET}/{PREFIX}/victim/task/uid/round-0002/global.safetensors"
    with pytest.raises(store.BadInput, match="AccessDenied"):
        store.write_bytes(victim, b"poisoned")
    with pytest.raises(store.BadInput, match="AccessDenied"):
        store.list_objects(f"s3://{BUCKET}/{PREFIX}/victim/task/uid/round-0001/updates")


async def test_the_namespace_s_user_and_secret_go_with_its_last_task(minio_root, tmp_path):
    """NamespaceCredentials.release (the reconciler calls it once the namespace's last task is deleted) deletes the
    operator's Secret and the MinIO user: the keys stop working. While a task is there, or for a Secret that is not
    the operator's, nothing is removed. A later task gets new keys."""
    import base64

    import kubernetes

    from tests.support.kube import EmulatedCluster

    def secret(cluster):
        return cluster.get("v1/secrets", "team-x", credentials.SECRET_NAME)

    def keys(cluster) -> tuple[str, str]:
        stored = secret(cluster)
        if "data" not in stored:  # the emulated API server keeps stringData as written
            return stored["stringData"][credentials.ACCESS_KEY], stored["stringData"][credentials.SECRET_KEY]
        return (base64.b64decode(stored["data"][credentials.ACCESS_KEY]).decode(),
                base64.b64decode(stored["data"][credentials.SECRET_KEY]).decode())

    def works(access: str, secret_key: str) -> bool:
        import minio
        from minio.error import S3Error

        client = minio.Minio(minio_root.endpoint, access_key=access, secret_key=secret_key, secure=False,
                             region=minio_root.region)
        try:
            put(client, f"{PREFIX}/team-x/t/u/object")
            return True
        except S3Error as error:
            assert error.code == "InvalidAccessKeyId", error.code
            return False

    store = credentials.StoreAdmin(minio_root.endpoint, minio_root.access_key, minio_root.secret_key, False,
                                   minio_root.region, BUCKET, PREFIX)
    with EmulatedCluster(tmp_path / "cluster") as cluster:
        api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        issuer = credentials.NamespaceCredentials(api_client, store)
        assert await issuer.ensure("team-x") is None
        first = keys(cluster)
        assert works(*first)

        assert await issuer.release("team-x", still_used=lambda: True) is None  # a task came meanwhile
        assert secret(cluster) is not None and works(*first)

        assert await issuer.release("team-x", still_used=lambda: False) is None
        assert secret(cluster) is None
        assert not works(*first)

        assert await issuer.ensure("team-x") is None  # a new task in the namespace: new keys
        second = keys(cluster)
        assert second[1] != first[1] and works(*second)

        kubernetes.client.CoreV1Api(api_client).create_namespaced_secret("team-y", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": credentials.SECRET_NAME},
            "data": {credentials.SECRET_KEY: base64.b64encode(b"someone's").decode()}})
        assert cluster.get("v1/secrets", "team-y", credentials.SECRET_NAME) is not None
        assert await issuer.release("team-y", still_used=lambda: False) is None
        assert cluster.get("v1/secrets", "team-y", credentials.SECRET_NAME) is not None  # not ours: left alone
