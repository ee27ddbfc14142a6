"""Least privilege in the store on the real control plane (issue 12): the chart (minio.enabled, its default
storage.namespaceCredentials) keeps the MinIO root keys in the release namespace. A task in its own namespace runs end
to end with the keys the operator issued for that namespace: the Secret fedtask-store-credentials, which every pod of
the task reads and which holds no root key; no Secret of the namespace holds the root keys. With those keys the
namespace reads its own task's objects and is refused (AccessDenied) on another namespace's objects and on listing the
bucket. A task naming another namespace's object in spec.model.initialUri fails with InvalidSpec before any pod."""
from __future__ import annotations

import base64
import io
import time

import pytest
import yaml

from tests.cluster.conftest import NAMESPACE, ROOT, LocalCluster, PodRecorder
from tests.support.minio_server import refused

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

TEAM = "team-store"
ISSUED = "fedtask-store-credentials"
BUCKET, PREFIX = "fedtask", "tasks"  # the chart's defaults (storage.bucket, storage.prefix)


def task_manifest(name: str, namespace: str, **model) -> str:
    with open(ROOT / "examples" / "digits-quick.yaml") as handle:
        task = yaml.safe_load(handle)
    task["metadata"] = {"name": name, "namespace": namespace}
    task["spec"]["devices"] = {"count": 4, "perRound": 2}
    task["spec"]["rounds"] = {"max": 2}
    task["spec"]["model"].update(model)
    return yaml.safe_dump(task)


def wait_finished(cluster: LocalCluster, name: str, namespace: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    task: dict = {}
    while time.monotonic() < deadline:
        task = cluster.get_json("federatedtask", name, "-n", namespace)
        if (task.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return task
        time.sleep(1)
    describe = cluster.kubectl("describe", "federatedtask", name, "-n", namespace, check=False).stdout
    raise AssertionError(f"{namespace}/{name} still {task.get('status', {}).get('phase')} after {timeout}s\n"
                         f"{describe}\n{cluster.logs()}")


def decoded(secret: dict) -> dict[str, str]:
    return {key: base64.b64decode(value).decode(errors="replace") for key, value in (secret.get("data") or {}).items()}


def root_keys(cluster: LocalCluster) -> tuple[str, str]:
    """The chart MinIO's root keys, from the Secret its Deployment reads them from (release namespace)."""
    found = [d for d in cluster.get_json("deployments", "-n", NAMESPACE)["items"] if "minio" in d["metadata"]["name"]]
    assert len(found) == 1, found
    env = found[0]["spec"]["template"]["spec"]["containers"][0].get("env") or []
    name = next(e["valueFrom"]["secretKeyRef"]["name"] for e in env if e.get("valueFrom"))
    values = decoded(cluster.get_json("secret", name, "-n", NAMESPACE))
    return values["MINIO_ROOT_USER"], values["MINIO_ROOT_PASSWORD"]


def client(access: str, secret: str):
    import minio

    # pods share the machine's network: the chart's MinIO is on this machine's :9000
    return minio.Minio("127.0.0.1:9000", access_key=access, secret_key=secret, secure=False)


def test_a_task_runs_with_its_namespace_s_own_keys_and_no_root_secret_enters_the_namespace(cluster: LocalCluster):
    name = "own-keys"
    cluster.kubectl("create", "namespace", TEAM)
    with PodRecorder(cluster, name, namespace=TEAM) as recorder:
        cluster.kubectl("apply", "-f", "-", input=task_manifest(name, TEAM))
        task = wait_finished(cluster, name, TEAM)
    assert task["status"]["phase"] == "Succeeded", task["status"]
    assert not recorder.errors, recorder.errors

    # every pod of the task read its store keys from the issued Secret, nothing else
    assert recorder.pods, "no pod recorded"
    for pod_name, pod in recorder.pods.items():
        env = pod["spec"]["containers"][0].get("env") or []
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env
                if (e.get("valueFrom") or {}).get("secretKeyRef")}
        assert refs == {"AWS_ACCESS_KEY_ID": ISSUED, "AWS_SECRET_ACCESS_KEY": ISSUED}, (pod_name, refs)

    root_user, root_password = root_keys(cluster)
    secrets = cluster.get_json("secrets", "-n", TEAM)["items"]
    for secret in secrets:
        values = decoded(secret).values()
        assert root_password not in values and root_user not in values, secret["metadata"]["name"]
    issued = next(s for s in secrets if s["metadata"]["name"] == ISSUED)
    assert issued["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fedtask-operator"
    keys = decoded(issued)
    assert keys["AWS_ACCESS_KEY_ID"] == f"fedtask-ns-{TEAM}"

    # the namespace's keys: its own task's model yes; another namespace's object and listing the bucket no
    own = client(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])
    model_key = task["status"]["model"]["uri"][len(f"s3://{BUCKET}/"):]
    assert model_key.startswith(f"{PREFIX}/{TEAM}/{name}/")
    response = own.get_object(BUCKET, model_key)
    assert len(response.read()) > 0
    response.close()
    response.release_conn()
    root = client(root_user, root_password)
    other = f"{PREFIX}/other-team/t/uid/round-0001/global.safetensors"
    root.put_object(BUCKET, other, io.BytesIO(b"theirs"), 6)
    assert refused(lambda: own.get_object(BUCKET, other)) == "AccessDenied"
    assert refused(lambda: own.put_object(BUCKET, other, io.BytesIO(b"poisoned"), 8)) == "AccessDenied"
    assert refused(lambda: list(own.list_objects(BUCKET, prefix=f"{PREFIX}/", recursive=True))) == "AccessDenied"
    body = root.get_object(BUCKET, other)
    assert body.read() == b"theirs"
    body.close()
    body.release_conn()


def test_a_task_naming_another_namespace_s_object_fails_before_any_pod(cluster: LocalCluster):
    name = "foreign-model"
    cluster.kubectl("create", "namespace", TEAM, check=False)  # the first test may have made it
    foreign = f"s3://{BUCKET}/{PREFIX}/{NAMESPACE}/someone/uid/round-0001/global.safetensors"
    cluster.kubectl("apply", "-f", "-", input=task_manifest(name, TEAM, initialUri=foreign))
    task = wait_finished(cluster, name, TEAM, timeout=60)
    failed = next(c for c in task["status"]["conditions"] if c["type"] == "Failed")
    assert (task["status"]["phase"], failed["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.model.initialUri" in failed["message"] and f"s3://{BUCKET}/{PREFIX}/{TEAM}/" in failed["message"]
    pods = cluster.get_json("pods", "-n", TEAM, "-l", f"fedtask.io/task={name}")["items"]
    assert pods == []
