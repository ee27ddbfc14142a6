"""Pod names, labels and object keys exactly as docs/internals.md fixes them."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from fedtask_operator.core import naming as n
from fedtask_operator.core.spec import parse_task

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


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TASK_NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,100}[a-z0-9])?", fullmatch=True)
DEVICES = st.one_of(st.integers(0, 99999).map(n.shard_device_id),
                    st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,80}[a-z0-9])?", fullmatch=True))


@settings(max_examples=60, deadline=None)
@given(task=TASK_NAMES, round_=st.integers(0, 99999), device=DEVICES, attempt=st.integers(0, 200))
def test_every_pod_name_is_valid_and_deterministic(task, round_, device, attempt):
    names = [n.init_pod_name(task, attempt), n.train_pod_name(task, round_, device, attempt),
             n.aggregate_pod_name(task, round_, attempt), n.adjust_pod_name(task, round_, attempt),
             n.publish_pod_name(task, device, attempt)]
    for name in names:
        assert len(name) <= 63 and DNS_SUBDOMAIN.match(name), name
    assert len(set(names)) == len(names)
    assert names[1] == n.train_pod_name(task, round_, device, attempt)
    assert LABEL_VALUE.match(n.label_value(task)) and len(n.label_value(task)) <= 63


@settings(max_examples=40, deadline=None)
@given(task=TASK_NAMES, round_=st.integers(1, 9999), devices=st.lists(DEVICES, min_size=2, max_size=2, unique=True),
       attempts=st.lists(st.integers(0, 5), min_size=2, max_size=2))
def test_distinct_inputs_give_distinct_train_pod_names(task, round_, devices, attempts):
    a = n.train_pod_name(task, round_, devices[0], attempts[0])
    b = n.train_pod_name(task, round_, devices[1], attempts[1])
    assert a != b


@pytest.mark.parametrize("device, part", [("0.-0", "0.0"), ("a-.b", "a.b"), ("a..b", "a.b"), ("a-.-b", "a.b"),
                                          ("node-1.example.com", "node-1.example.com"), ("a--b", "a--b")])
def test_dns_part_keeps_every_dot_separated_label_alphanumeric_at_both_ends(device, part):
    assert n.dns_part(device) == part


def test_the_node_a_pod_is_pinned_to():
    def affinity(*terms):
        return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": list(expressions)} for expressions in terms]}}}}

    def hostname(*values, operator="In"):
        return {"key": "kubernetes.io/hostname", "operator": operator, "values": list(values)}

    zone = {"key": "zone", "operator": "In", "values": ["z1"]}
    assert n.pinned_node({"spec": affinity([hostname("edge-3")])}) == "edge-3"  # the form pods.py writes
    assert n.pinned_node({"spec": affinity([zone, hostname("edge-3")])}) == "edge-3"
    assert n.pinned_node({"spec": {"nodeName": "bound", **affinity([hostname("edge-3")])}}) == "bound"
    assert n.pinned_node({"spec": {"nodeSelector": {"kubernetes.io/hostname": "edge-4"}}}) == "edge-4"
    assert n.pinned_node({"spec": affinity([hostname("a", "b")])}) is None  # either node
    assert n.pinned_node({"spec": affinity([hostname("a")], [hostname("b")])}) is None  # alternatives
    assert n.pinned_node({"spec": affinity([hostname("a", operator="NotIn")])}) is None
    assert n.pinned_node({"spec": {}}) is None
    assert n.pinned_node({}) is None
