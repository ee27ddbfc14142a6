"""Per-pod presigned store access (issue 12): which objects each stage's pod may read and write (pure,
core/store_access.pod_store_grants), how long its URLs last, and how kube/presign.Presigner puts them into the pod
(no store keys left; few URLs inline, many in a manifest object). What the store refuses is tested against the real
MinIO in tests/api/test_presigned_access.py."""
from __future__ import annotations

import json
import urllib.parse

import pytest

from fedtask_operator.core.pods import (
    RuntimeConfig,
    build_adjust_pod,
    build_aggregate_pod,
    build_init_pod,
    build_publish_pod,
    build_train_pod,
)
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.spec import parse_task
from fedtask_operator.core.store_access import (
    MAX_GRANT_SECONDS,
    grant_seconds,
    pod_store_grants,
    store_uri_errors,
    uses_presigned_urls,
)
from fedtask_operator.kube.presign import ACCESS_ENV, ACCESS_URL_ENV, Presigner, PresignError

PRESIGNED = RuntimeConfig(store_base_uri="s3://fedtask/tasks", s3_endpoint="minio:9000", s3_region="us-east-1",
                          presigned_urls=True)
B = "s3://fedtask/tasks/team-a/mnist/uid-1"


def make_task(spec: dict | None = None, status: dict | None = None):
    return parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "mnist", "namespace": "team-a", "uid": "uid-1"},
                       "spec": {"devices": {"count": 4, "perRound": 2}, **(spec or {})}, "status": status or {}})


def env_of(pod: dict) -> dict:
    return {item["name"]: item for item in pod["spec"]["containers"][0]["env"]}


def test_each_stage_reads_and_writes_exactly_its_own_objects():
    task = make_task({"model": {"name": "mlp", "initialUri": "s3://fedtask/tasks/team-a/base.safetensors"},
                      "aggregation": {"strategy": "fedadam"},
                      "data": {"dataset": "mnist", "shared": {"uri": "s3://fedtask/tasks/team-a/shared.npz"}}})
    updates = [f"{B}/round-0002/updates/d000.safetensors", f"{B}/round-0002/updates/d003.safetensors"]
    assert pod_store_grants(build_init_pod(task, PRESIGNED)) == (
        ("s3://fedtask/tasks/team-a/base.safetensors",), (f"{B}/round-0000/global.safetensors",))
    assert pod_store_grants(build_train_pod(task, PRESIGNED, 2, DeviceSlot("d003", "node-1"))) == (
        (f"{B}/round-0001/global.safetensors",), (f"{B}/round-0002/updates/d003.safetensors",))
    assert pod_store_grants(build_aggregate_pod(task, PRESIGNED, 2, updates)) == (
        (f"{B}/round-0001/global.safetensors", f"{B}/round-0001/server-state.safetensors", *updates),
        (f"{B}/round-0002/aggregate.safetensors", f"{B}/round-0002/server-state.safetensors"))
    assert pod_store_grants(build_adjust_pod(task, PRESIGNED, 2)) == (
        (f"{B}/round-0002/aggregate.safetensors", "s3://fedtask/tasks/team-a/shared.npz"),
        (f"{B}/round-0002/global.safetensors",))
    assert pod_store_grants(build_publish_pod(task, PRESIGNED, "node-1", f"{B}/round-0002/global.safetensors")) == (
        (f"{B}/round-0002/global.safetensors",), ())


def test_a_disabled_adjustment_switch_does_not_shift_the_flags():
    task = make_task({"adjustment": {"enabled": False}})
    assert pod_store_grants(build_adjust_pod(task, PRESIGNED, 1)) == (
        (f"{B}/round-0001/aggregate.safetensors",), (f"{B}/round-0001/global.safetensors",))


def test_urls_outlast_the_planners_deadline_for_the_pod_and_never_seven_days():
    task = make_task({"rounds": {"timeoutSeconds": 900}, "stageTimeoutSeconds": 1200})
    assert grant_seconds(task, "train") == 2 * 900 + 600
    assert grant_seconds(task, "aggregate") == grant_seconds(task, "publish") == 1200 + 600
    assert grant_seconds(make_task({"stageTimeoutSeconds": 604800}), "adjust") == MAX_GRANT_SECONDS


def test_pods_get_no_store_keys_and_tasks_with_their_own_secret_keep_it():
    task = make_task()
    env = env_of(build_train_pod(task, PRESIGNED, 1, DeviceSlot("d000", "n")))
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert uses_presigned_urls(task, PRESIGNED)
    own = make_task({"storage": {"secretRef": {"name": "mine"}, "bucket": "b"}})
    assert not uses_presigned_urls(own, PRESIGNED)
    assert env_of(build_init_pod(own, PRESIGNED))["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "mine"
    (error,) = store_uri_errors(make_task({"storage": {"bucket": "elsewhere"}}), PRESIGNED)
    assert error.startswith("spec.storage.bucket: ") and "spec.storage.secretRef" in error


def signer(clock=lambda: 1_800_000_000.0) -> Presigner:
    presigner = Presigner("minio:9000", "root", "root-secret", False, "us-east-1", clock=clock)
    presigner._buckets.add("fedtask")  # the bucket check is a request: these tests make none
    return presigner


def test_a_train_pod_gets_its_urls_inline_signed_locally_for_its_deadline():
    task = make_task({"rounds": {"timeoutSeconds": 600}})
    pod = build_train_pod(task, PRESIGNED, 1, DeviceSlot("d001", "n"))
    before = json.dumps(pod)
    signed = signer().attach(pod, task, B, f"{B}/access/x.json")
    assert json.dumps(pod) == before  # the planner's manifest is left as it was
    access = json.loads(env_of(signed)[ACCESS_ENV]["value"])
    assert access["expires"] == "2027-01-15T08:30:00Z"  # 1.8e9 s (08:00:00) + 2 * 600 + 600
    assert set(access["objects"]) == {f"{B}/round-0000/global.safetensors", f"{B}/round-0001/updates/d001.safetensors"}
    get = urllib.parse.urlsplit(access["objects"][f"{B}/round-0000/global.safetensors"]["GET"])
    put = urllib.parse.urlsplit(access["objects"][f"{B}/round-0001/updates/d001.safetensors"]["PUT"])
    assert list(access["objects"][f"{B}/round-0000/global.safetensors"]) == ["GET"]
    assert list(access["objects"][f"{B}/round-0001/updates/d001.safetensors"]) == ["PUT"]
    assert (get.netloc, get.path) == ("minio:9000", "/fedtask/tasks/team-a/mnist/uid-1/round-0000/global.safetensors")
    query = dict(urllib.parse.parse_qsl(put.query))
    assert query["X-Amz-Expires"] == "1800" and query["X-Amz-Credential"].startswith("root/")
    assert "root-secret" not in json.dumps(signed)
    assert not any(name.startswith("AWS_") for name in env_of(signed))


def test_an_aggregate_of_a_thousand_updates_gets_one_manifest_url(s3_server):
    s3_server.client().make_bucket("fedtask")
    task = make_task({"devices": {"count": 1000, "perRound": 1000}})
    updates = [f"{B}/round-0001/updates/d{index:03d}.safetensors" for index in range(1000)]
    pod = build_aggregate_pod(task, PRESIGNED, 1, updates)
    presigner = Presigner(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, False, s3_server.region)
    signed = presigner.attach(pod, task, B, f"{B}/access/{pod['metadata']['name']}.json")
    env = env_of(signed)
    assert ACCESS_ENV not in env and len(env[ACCESS_URL_ENV]["value"]) < 2000
    assert len(json.dumps(signed)) < len(json.dumps(pod)) + 2000  # the pod object grows by one URL only
    response = s3_server.client().get_object("fedtask", f"tasks/team-a/mnist/uid-1/access/{pod['metadata']['name']}"
                                                        ".json")
    manifest = json.loads(response.read())
    response.close()
    assert len(manifest["objects"]) == 1002  # 1000 updates and the base model to read, the aggregate to write
    assert manifest["objects"][f"{B}/round-0001/aggregate.safetensors"].keys() == {"PUT"}


def test_no_keys_is_a_presign_error_and_an_unreachable_store_holds_back_only_manifests(monkeypatch):
    with pytest.raises(PresignError, match="AWS_ACCESS_KEY_ID"):
        Presigner("minio:9000", "", "", False, "us-east-1")
    task = make_task()
    unreachable = Presigner("127.0.0.1:1", "root", "secret", False, "us-east-1", timeout=1)
    # a pod with inline URLs needs nothing from the store now: it waits out the outage itself (exit 3, retried)
    signed = unreachable.attach(build_init_pod(task, PRESIGNED), task, B, f"{B}/access/x.json")
    assert ACCESS_ENV in env_of(signed) and unreachable._buckets == set()  # asked again at the next pod
    monkeypatch.setattr("fedtask_operator.kube.presign.INLINE_LIMIT", 0)  # a pod whose URLs need a manifest
    with pytest.raises(PresignError, match="presigned store access for pod mnist-init"):
        unreachable.attach(build_init_pod(task, PRESIGNED), task, B, f"{B}/access/x.json")


# --------------------------------------------------------------------------------------------------------------------
# The reconciler gives each pod its URLs when it creates it


async def test_the_reconciler_creates_pods_with_their_urls_and_without_keys(monkeypatch):
    from tests.support.reconciler import KEY, FakeKubeApi, reconciler_for
    from tests.support.reconciler import make_task as task_body

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "root")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "root-secret")
    api = FakeKubeApi(task_body())
    reconciler, _ = reconciler_for(api, PRESIGNED)
    reconciler._presigner = signer()
    await reconciler.request(*KEY, api.views())
    pod = api.pods[("default", "mnist-init")]
    env = env_of(pod)
    assert not any(name.startswith("AWS_") for name in env)
    access = json.loads(env[ACCESS_ENV]["value"])
    assert list(access["objects"]) == ["s3://fedtask/tasks/default/mnist/uid-1/round-0000/global.safetensors"]


async def test_without_the_store_keys_no_pod_is_created_and_the_task_says_why(monkeypatch):
    from fedtask_operator.core.conditions import get_condition
    from tests.support.reconciler import KEY, FakeKubeApi, reconciler_for
    from tests.support.reconciler import make_task as task_body

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    api = FakeKubeApi(task_body())
    reconciler, events = reconciler_for(api, PRESIGNED)
    await reconciler.request(*KEY, api.views())
    assert api.pod_names() == []
    stalled = get_condition(api.status["conditions"], "Stalled")
    assert stalled["reason"] == "PodCreationFailed" and "AWS_ACCESS_KEY_ID" in stalled["message"]


# --------------------------------------------------------------------------------------------------------------------
# The operator's flag


def test_presigned_urls_need_the_keys_and_the_endpoint_and_replace_the_other_ways(monkeypatch, capsys):
    from fedtask_operator.kube.cli import parse_config

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FEDTASK_S3_PRESIGNED_URLS", "FEDTASK_S3_SECRET",
                 "FEDTASK_S3_NAMESPACE_CREDENTIALS", "FEDTASK_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        parse_config(["--presigned-urls", "--store-endpoint", "minio:9000"])
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "root")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(SystemExit):
        parse_config(["--presigned-urls"])
    assert "--store-endpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--presigned-urls", "--store-endpoint", "minio:9000", "--store-secret", "s"])
    config = parse_config(["--presigned-urls", "--namespace-credentials", "--store-endpoint", "minio:9000"])
    assert (config.presigned_urls, config.namespace_credentials) == (True, False)
    assert not parse_config(["--no-presigned-urls", "--store-endpoint", "minio:9000"]).presigned_urls
    assert parse_config(["--store-endpoint", "minio:9000"]).presigned_urls  # the default with keys and a store
    assert not parse_config(["--store-endpoint", "minio:9000", "--store-secret", "s"]).presigned_urls
    assert not parse_config(["--store-endpoint", "minio:9000", "--namespace-credentials"]).presigned_urls
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert not parse_config(["--store-endpoint", "minio:9000"]).presigned_urls


def test_every_worker_flag_that_names_an_object_is_granted_as_a_read_or_a_write():
    """A new worker flag naming a store object must be classified, or its pods would run without a URL for it."""
    from fedtask_operator.core.store_access import READ_FLAGS, SWITCH_FLAGS, WRITE_FLAGS
    from fedtask_worker.cli import build_parser

    parser = build_parser()
    stages = next(action for action in parser._actions if action.dest == "stage").choices
    local = {"--result-file", "--data-dir", "--updates-prefix"}  # a local path; listing (the planner never uses it)
    for stage, sub in stages.items():
        for action in sub._actions:
            flags = [flag for flag in action.option_strings if flag.startswith("--")]
            if not flags:
                continue
            (flag,) = flags[-1:]
            naming_object = any(word in action.dest for word in ("uri", "output", "input", "global", "base", "state"))
            if action.nargs == 0:
                assert flag not in READ_FLAGS | WRITE_FLAGS, (stage, flag)
                assert not naming_object or flag in SWITCH_FLAGS, (stage, flag)
            elif naming_object and flag not in local:
                assert flag in READ_FLAGS | WRITE_FLAGS, (stage, flag, action.dest)
