"""Per-pod presigned store access against the REAL MinIO server (issue 12, least privilege per pod).

The operator's kube/presign.Presigner signs, with the store's root keys, the URLs of the pods the pure pod builders
make. A train pod's URLs read its round's global model and write its own update, and nothing else: another device's
update, the next global model, another namespace's object and a GET URL turned into a PUT are refused by the store
(403); so are URLs past their expiry. The aggregate pod's own command runs to the end on its URLs alone (through an
access manifest object), with no store keys in its environment. A missing `minio` binary fails these tests
(tests/support/minio_server.py says how to build it); `make test-cluster` builds it first.
"""
from __future__ import annotations

import io
import json
import time

import pytest
import urllib3

from fedtask_operator.core.pods import RuntimeConfig, build_aggregate_pod, build_train_pod
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.spec import parse_task
from fedtask_operator.kube import presign
from tests.support.minio_server import run_minio_server

pytestmark = pytest.mark.cluster

BUCKET = "fedtask"
B = "s3://fedtask/tasks/team-a/mnist/uid-1"


@pytest.fixture(scope="module")
def minio_root(tmp_path_factory):
    with run_minio_server(tmp_path_factory.mktemp("minio") / "data") as server:
        yield server


@pytest.fixture
def world(minio_root):
    """The bucket with round 1's global model and team-b's model; a config and task of namespace team-a."""
    from minio.deleteobjects import DeleteObject

    client = minio_root.client()
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    for item in client.list_objects(BUCKET, recursive=True):
        client.remove_objects(BUCKET, [DeleteObject(item.object_name)])
    for key, body in [("tasks/team-a/mnist/uid-1/round-0001/global.safetensors", b"global-1"),
                      ("tasks/team-b/other/uid-9/round-0001/global.safetensors", b"theirs")]:
        client.put_object(BUCKET, key, io.BytesIO(body), len(body))
    config = RuntimeConfig(store_base_uri="s3://fedtask/tasks", s3_endpoint=minio_root.endpoint,
                           s3_region=minio_root.region, presigned_urls=True)
    task = parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "mnist", "namespace": "team-a", "uid": "uid-1"},
                       "spec": {"devices": {"count": 4, "perRound": 2}, "rounds": {"timeoutSeconds": 600}}})
    return client, config, task


def signer(server, clock=time.time) -> presign.Presigner:
    return presign.Presigner(server.endpoint, server.access_key, server.secret_key, False, server.region, clock=clock)


def grants_of(pod: dict) -> dict:
    env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
    assert not any(name.startswith("AWS_") for name in env), env
    return json.loads(env[presign.ACCESS_ENV])["objects"]


def call(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    response = urllib3.request(method, url, body=body, retries=False)
    return response.status, response.data


def another_key(url: str, key: str, other: str) -> str:
    assert f"/{key}?" in url
    return url.replace(f"/{key}?", f"/{other}?")


def test_a_train_pod_reads_and_writes_its_own_objects_and_nothing_else(minio_root, world):
    client, config, task = world
    pod = signer(minio_root).attach(build_train_pod(task, config, 2, DeviceSlot("d000", "node-1")), task, B,
                                    f"{B}/access/p.json")
    objects = grants_of(pod)
    own_update, model = f"{B}/round-0002/updates/d000.safetensors", f"{B}/round-0001/global.safetensors"
    assert set(objects) == {own_update, model}
    assert call("GET", objects[model]["GET"]) == (200, b"global-1")
    assert call("PUT", objects[own_update]["PUT"], b"my update")[0] == 200

    put, get = objects[own_update]["PUT"], objects[model]["GET"]
    own_key, model_key = "fedtask/tasks/team-a/mnist/uid-1/round-0002/updates/d000.safetensors", \
        "fedtask/tasks/team-a/mnist/uid-1/round-0001/global.safetensors"
    attempts = {
        "another device's update": ("PUT", another_key(put, own_key, own_key.replace("d000", "d001"))),
        "the next global model": ("PUT", another_key(put, own_key, model_key.replace("0001", "0002"))),
        "overwriting the global model it reads": ("PUT", get),
        "another namespace's model": ("GET", another_key(get, model_key, "fedtask/tasks/team-b/other/uid-9/"
                                                                          "round-0001/global.safetensors")),
        "reading its own update back": ("GET", put),
        "listing the bucket": ("GET", get.replace(f"/{model_key}?", "/fedtask?list-type=2&")),
    }
    for what, (method, url) in attempts.items():
        status, body = call(method, url, b"poisoned" if method == "PUT" else None)
        assert status == 403, (what, status, body[:300])
        assert b"SignatureDoesNotMatch" in body or b"AccessDenied" in body, (what, body[:300])
    names = sorted(item.object_name for item in client.list_objects(BUCKET, recursive=True))
    assert names == ["tasks/team-a/mnist/uid-1/round-0001/global.safetensors",
                     "tasks/team-a/mnist/uid-1/round-0002/updates/d000.safetensors",
                     "tasks/team-b/other/uid-9/round-0001/global.safetensors"]
    theirs = client.get_object(BUCKET, "tasks/team-b/other/uid-9/round-0001/global.safetensors")
    assert theirs.read() == b"theirs"
    theirs.close()


def test_urls_past_their_expiry_are_refused(minio_root, world):
    _, config, task = world
    lifetime = 2 * 600 + 600  # grant_seconds for a train pod of rounds.timeoutSeconds 600
    old = signer(minio_root, clock=lambda: time.time() - lifetime - 5)
    objects = grants_of(old.attach(build_train_pod(task, config, 2, DeviceSlot("d001", "n")), task, B, "unused"))
    status, body = call("GET", objects[f"{B}/round-0001/global.safetensors"]["GET"])
    assert status == 403 and b"Request has expired" in body, body[:300]
    fresh = signer(minio_root, clock=lambda: time.time() - lifetime + 60)
    objects = grants_of(fresh.attach(build_train_pod(task, config, 2, DeviceSlot("d001", "n")), task, B, "unused"))
    assert call("GET", objects[f"{B}/round-0001/global.safetensors"]["GET"])[0] == 200


def test_the_aggregate_pod_runs_its_own_command_on_a_manifest_of_urls(minio_root, world, monkeypatch, tmp_path,
                                                                      capsys):
    from fedtask_worker import cli, presigned
    from fedtask_worker.errors import BadInput
    from tests.support.worker import random_model, write_update

    client, config, task = world
    write_update(tmp_path / "base", random_model(0), num_samples=None)
    client.fput_object(BUCKET, "tasks/team-a/mnist/uid-1/round-0001/global.safetensors", str(tmp_path / "base"))
    updates = []
    for index in range(3):
        write_update(tmp_path / f"u{index}", random_model(index + 1), num_samples=5, round=2)
        key = f"tasks/team-a/mnist/uid-1/round-0002/updates/d{index:03d}.safetensors"
        client.fput_object(BUCKET, key, str(tmp_path / f"u{index}"))
        updates.append(f"s3://{BUCKET}/{key}")
    monkeypatch.setattr(presign, "INLINE_LIMIT", 0)  # as an aggregate of many updates: one manifest URL
    built = build_aggregate_pod(task, config, 2, updates)
    pod = signer(minio_root).attach(built, task, B, f"{B}/access/{built['metadata']['name']}.json")
    container = pod["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert set(env) & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", presign.ACCESS_ENV} == set()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FEDTASK_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(presigned.ACCESS_URL_ENV, env[presign.ACCESS_URL_ENV])
    args = list(container["args"])
    args[args.index("--result-file") + 1] = str(tmp_path / "result")
    code = cli.main(args)
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "result").read_text())["updates"] == 3
    client.stat_object(BUCKET, "tasks/team-a/mnist/uid-1/round-0002/aggregate.safetensors")
    from fedtask_worker import store

    with pytest.raises(BadInput, match="this pod may not write it"):
        store.write_bytes(f"{B}/round-0002/global.safetensors", b"poisoned")
