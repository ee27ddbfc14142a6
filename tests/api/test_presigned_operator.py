"""The real operator (subprocess) with presigned store access, its default when it holds the store's keys: a task
runs to Succeeded while its pods hold no store keys (no AWS_* variable, no Secret reference, none in the kubelet's
own environment either), each with the URLs of its own objects only. On moto's S3 (it does not check signatures:
what the store refuses is tested on the real MinIO, tests/api/test_presigned_access.py and
tests/cluster/test_store_credentials.py)."""
from __future__ import annotations

import json
import os

import pytest

from tests.support.kube import PODS, make_node
from tests.support.operator import DEVICE, digits_task, finished
from tests.support.waiting import wait_for

pytestmark = pytest.mark.api


@pytest.fixture
def keyless_kubelet(cluster, s3_server, tmp_path, fork_server):
    from tests.support.kubelet import ApiKubelet

    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "FEDTASK_S3_"))}
    env.update(OMP_NUM_THREADS="1", FEDTASK_STORE_RETRY_SECONDS="5")
    with ApiKubelet(cluster, tmp_path / "kubelet", base_env=env, launcher=fork_server) as running:
        yield running
    assert not running.errors, running.errors


def test_a_task_succeeds_with_pods_that_hold_only_their_own_urls(cluster, operator, keyless_kubelet):
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(make_node("node-b", labels=DEVICE))
    cluster.apply(digits_task("keyless", rounds=1))

    status = wait_for(lambda: finished(cluster, "keyless"), timeout=150, message="the task to finish")

    assert status["phase"] == "Succeeded", status
    pods = {pod["metadata"]["name"]: pod for pod in cluster.history(PODS)}
    assert {name.split("-")[-1] for name in pods} >= {"init", "aggregate", "adjust"}
    for name, pod in pods.items():
        env = {item["name"]: item for item in pod["spec"]["containers"][0]["env"]}
        assert not [key for key in env if key.startswith("AWS_")], name
        assert not [item for item in env.values() if "secretKeyRef" in (item.get("valueFrom") or {})], name
        objects = json.loads(env["FEDTASK_STORE_ACCESS"]["value"])["objects"]
        if "-train-" in name:
            device = name.rsplit("-", 1)[-1]
            assert sorted(uri.rsplit("/", 2)[-2] + "/" + uri.rsplit("/", 1)[-1] for uri in objects) == [
                "round-0000/global.safetensors", f"updates/{device}.safetensors"], objects
            assert [list(methods) for methods in objects.values()].count(["PUT"]) == 1
