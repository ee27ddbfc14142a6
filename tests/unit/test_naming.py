"""Pod names, labels and object keys exactly as docs/internals.md fixes them."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from fedtask_operator import naming as n
from fedtask_operator.spec import parse_task

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def task(name="mnist", namespace="default", uid="0d1e", storage=None):
    return parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": name, "namespace": namespace, "uid": uid},
                       "spec": {"storage": storage or {}}})


def test_pod_names_follow_the_contract():
    assert n.init_pod_name("mnist") == "mnist-init"
    assert n.train_pod_name("mnist", 3, "d007") == "mnist-r0003-train-d007"
    assert n.train_pod_name("mnist", 3, "gpu-node-1") == "mnist-r0003-train-gpu-node-1"
    assert n.aggregate_pod_name("mnist", 3) == "mnist-r0003-aggregate"
    assert n.adjust_pod_name("mnist", 12) == "mnist-r0012-adjust"
    assert n.publish_pod_name("mnist", "node-a") == "mnist-publish-node-a"
    assert n.train_pod_name("mnist", 3, "d007", attempt=2) == "mnist-r0003-train-d007-a2"
    assert n.init_pod_name("mnist", attempt=1) == "mnist-init-a1"
    assert n.adjust_pod_name("mnist", 1, attempt=0) == "mnist-r0001-adjust"


def test_long_names_are_cut_to_63_with_a_hash_and_stay_distinct():
    long_task = "t" * 70
    names = {n.train_pod_name(long_task, 1, f"node-{i}", attempt) for i in range(5) for attempt in range(3)}

    assert len(names) == 15
    for name in names:
        assert len(name) == 63 and DNS_SUBDOMAIN.match(name), name
    first = n.train_pod_name(long_task, 1, "node-0")
    assert first.startswith("t" * 54 + "-") and first == n.train_pod_name(long_task, 1, "node-0")


def test_device_names_are_sanitized_for_pod_names():
    assert n.train_pod_name("m", 1, "Node_A.Example") == "m-r0001-train-node-a.example"


def test_labels():
    assert n.pod_labels("mnist", n.STAGE_TRAIN, 3, "d007") == {
        "app.kubernetes.io/managed-by": "fedtask", "fedtask.io/task": "mnist", "fedtask.io/stage": "train",
        "fedtask.io/round": "3", "fedtask.io/device": "d007"}
    assert n.pod_labels("mnist", n.STAGE_INIT) == {
        "app.kubernetes.io/managed-by": "fedtask", "fedtask.io/task": "mnist", "fedtask.io/stage": "init"}
    long_label = n.pod_labels("x" * 100 + ".y", n.STAGE_ADJUST, 1)[n.TASK_LABEL]
    assert len(long_label) <= 63 and LABEL_VALUE.match(long_label)


def test_shard_ids():
    assert [n.shard_device_id(i) for i in (0, 7, 123, 1234)] == ["d000", "d007", "d123", "d1234"]
    assert n.shard_index("d007") == 7 and n.shard_index("node-1") is None


@pytest.mark.parametrize("config_base, storage, expected", [
    ("s3://fedtask/tasks", None, "s3://fedtask/tasks/team/mnist/0d1e"),
    ("s3://fedtask/tasks/", {"bucket": "mine"}, "s3://mine/tasks/team/mnist/0d1e"),
    ("s3://fedtask/tasks", {"bucket": "mine", "prefix": "/fl/"}, "s3://mine/fl/team/mnist/0d1e"),
    ("s3://fedtask", None, "s3://fedtask/team/mnist/0d1e"),
    ("file:///tmp/run/store", {"bucket": "ignored-locally"}, "file:///tmp/run/store/team/mnist/0d1e"),
])
def test_store_base(config_base, storage, expected):
    config = SimpleNamespace(store_base_uri=config_base)
    assert n.store_base(task(namespace="team", storage=storage), config) == expected


def test_object_keys_follow_the_contract():
    base = "s3://b/p/ns/t/uid"
    assert n.round_prefix(base, 3) == "s3://b/p/ns/t/uid/round-0003"
    assert n.global_uri(base, 0) == "s3://b/p/ns/t/uid/round-0000/global.safetensors"
    assert n.update_uri(base, 3, "d007") == "s3://b/p/ns/t/uid/round-0003/updates/d007.safetensors"
    assert n.updates_prefix(base, 3) == "s3://b/p/ns/t/uid/round-0003/updates/"
    assert n.aggregate_uri(base, 3) == "s3://b/p/ns/t/uid/round-0003/aggregate.safetensors"
    assert n.server_state_uri(base, 2) == "s3://b/p/ns/t/uid/round-0002/server-state.safetensors"
    assert n.published_model_path("/models/", "ns", "t") == "/models/ns/t/model.safetensors"
