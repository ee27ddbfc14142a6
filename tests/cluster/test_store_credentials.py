"""Least privilege in the store on the real control plane (issue 12): the chart (minio.enabled, its default
storage.presignedUrls) keeps the MinIO root keys in the release namespace. A task in its own namespace runs end to end
with pods that hold no store keys at all, only presigned URLs for their own objects; the store refuses those URLs
turned to any other object. No Secret of the namespace holds a store key. A task naming another namespace's object in
spec.model.initialUri fails with InvalidSpec before any pod. (Per-namespace MinIO users, storage.presignedUrls=false,
are tested against the real MinIO in tests/api/test_namespace_credentials.py.)"""
from __future__ import annotations

import base64
import io
import json

import pytest
import yaml

from tests.support.cluster import NAMESPACE, ROOT, LocalCluster, PodRecorder, minio_deployment, wait_for_phase

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


def decoded(secret: dict) -> dict[str, str]:
    return {key: base64.b64decode(value).decode(errors="replace") for key, value in (secret.get("data") or {}).items()}


def root_keys(cluster: LocalCluster) -> tuple[str, str]:
    """The chart MinIO's root keys, from the Secret its Deployment reads them from (release namespace)."""
    env = minio_deployment(cluster)["spec"]["template"]["spec"]["containers"][0].get("env") or []
    name = next(e["valueFrom"]["secretKeyRef"]["name"] for e in env if e.get("valueFrom"))
    values = decoded(cluster.get_json("secret", name, "-n", NAMESPACE))
    return values["MINIO_ROOT_USER"], values["MINIO_ROOT_PASSWORD"]


def client(access: str, secret: str):
    import minio

    # pods share the machine's network: the chart's MinIO is on this machine's :9000
    return minio.Minio("127.0.0.1:9000", access_key=access, secret_key=secret, secure=False)


def signed_call(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """A presigned URL sent to the chart's MinIO on this machine's :9000, with the Host it was signed for."""
    import urllib.parse

    import urllib3

    parts = urllib.parse.urlsplit(url)
    response = urllib3.request(method, f"http://127.0.0.1:9000{parts.path}?{parts.query}", body=body,
                               headers={"Host": parts.netloc}, retries=False)
    return response.status, response.data


def test_a_task_runs_with_pods_that_hold_no_store_keys_only_their_own_urls(cluster: LocalCluster):
    """The chart's default (storage.presignedUrls): every pod of the task gets presigned URLs for its own objects and
    no store keys (no AWS_* variable, no Secret reference), and the task succeeds. A train pod's URLs, as recorded
    from its spec, read its global model; turned to another device's update, the next global model or another
    namespace's object, the store refuses them (403). No Secret of the namespace holds a store key."""
    name = "own-urls"
    cluster.kubectl("create", "namespace", TEAM)
    with PodRecorder(cluster, name, namespace=TEAM) as recorder:
        cluster.kubectl("apply", "-f", "-", input=task_manifest(name, TEAM))
        task = wait_for_phase(cluster, name, namespace=TEAM)
    assert task["status"]["phase"] == "Succeeded", task["status"]
    assert not recorder.errors, recorder.errors

    assert recorder.pods, "no pod recorded"
    train: dict[str, dict] = {}
    for pod_name, pod in recorder.pods.items():
        env = {e["name"]: e for e in pod["spec"]["containers"][0].get("env") or []}
        assert not [key for key in env if key.startswith("AWS_")], (pod_name, sorted(env))
        assert not [e for e in env.values() if (e.get("valueFrom") or {}).get("secretKeyRef")], pod_name
        assert "FEDTASK_STORE_ACCESS" in env or "FEDTASK_STORE_ACCESS_URL" in env, (pod_name, sorted(env))
        if pod["metadata"]["labels"].get("fedtask.io/stage") == "train":
            train[pod_name] = json.loads(env["FEDTASK_STORE_ACCESS"]["value"])["objects"]

    root_user, root_password = root_keys(cluster)
    secrets = cluster.get_json("secrets", "-n", TEAM)["items"]
    for secret in secrets:
        values = decoded(secret).values()
        assert root_password not in values and root_user not in values, secret["metadata"]["name"]
    assert ISSUED not in {secret["metadata"]["name"] for secret in secrets}  # no namespace user either

    pod_name, objects = sorted(train.items())[-1]
    (model,) = [uri for uri, methods in objects.items() if list(methods) == ["GET"]]
    (update,) = [uri for uri, methods in objects.items() if list(methods) == ["PUT"]]
    status, body = signed_call("GET", objects[model]["GET"])
    assert status == 200 and body[:8], (status, body[:200])
    root = client(root_user, root_password)
    other = f"{PREFIX}/other-team/t/uid/round-0001/global.safetensors"
    root.put_object(BUCKET, other, io.BytesIO(b"theirs"), 6)
    update_key, model_key = update[len(f"s3://{BUCKET}/"):], model[len(f"s3://{BUCKET}/"):]
    device = update_key.rsplit("/", 1)[-1]
    put, get = objects[update]["PUT"], objects[model]["GET"]
    attempts = {
        "another device's update": ("PUT", put.replace(device, "d999.safetensors")),
        "the next global model": ("PUT", put.replace(update_key.split("/updates/")[0] + "/updates/" + device,
                                                     update_key.split("/updates/")[0] + "/global.safetensors")),
        "overwriting the global model it reads": ("PUT", get),
        "another namespace's object": ("GET", get.replace(f"/{model_key}?", f"/{other}?")),
    }
    for what, (method, url) in attempts.items():
        assert url not in (put, get) or what == "overwriting the global model it reads", what
        status, body = signed_call(method, url, b"poisoned" if method == "PUT" else None)
        assert status == 403, (what, status, body[:300])
    body = root.get_object(BUCKET, other)
    assert body.read() == b"theirs"
    body.close()
    body.release_conn()


def test_a_task_naming_another_namespace_s_object_fails_before_any_pod(cluster: LocalCluster):
    name = "foreign-model"
    cluster.kubectl("create", "namespace", TEAM, check=False)  # the first test may have made it
    foreign = f"s3://{BUCKET}/{PREFIX}/{NAMESPACE}/someone/uid/round-0001/global.safetensors"
    cluster.kubectl("apply", "-f", "-", input=task_manifest(name, TEAM, initialUri=foreign))
    task = wait_for_phase(cluster, name, timeout=60, namespace=TEAM)
    failed = next(c for c in task["status"]["conditions"] if c["type"] == "Failed")
    assert (task["status"]["phase"], failed["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.model.initialUri" in failed["message"] and f"s3://{BUCKET}/{PREFIX}/{TEAM}/" in failed["message"]
    pods = cluster.get_json("pods", "-n", TEAM, "-l", f"fedtask.io/task={name}")["items"]
    assert pods == []
