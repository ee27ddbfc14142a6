"""A task may name store objects only under its own namespace's prefix or the operator's allowlist (issue 12).

The planner fails a task whose spec.model.initialUri or spec.data.shared.uri points elsewhere with InvalidSpec,
before any pod starts; the local runtime's folder store is not checked. The store's own refusal (AccessDenied with
per-namespace credentials) is tested against the real MinIO in tests/api/test_namespace_credentials.py.
"""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fedtask_operator.core import conditions
from fedtask_operator.core.planner import Observed, plan_task
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.spec import parse_task
from fedtask_operator.core.store_access import store_uri_errors

CLUSTER = RuntimeConfig(store_base_uri="s3://fedtask/tasks", s3_endpoint="minio:9000")
ISSUING = RuntimeConfig(store_base_uri="s3://fedtask/tasks", s3_endpoint="minio:9000", namespace_credentials=True,
                        credentials_secret="fedtask-store-credentials")
ALLOWING = RuntimeConfig(store_base_uri="s3://fedtask/tasks", allowed_uri_prefixes=("s3://models/public/",))
LOCAL = RuntimeConfig(store_base_uri="file:///tmp/work/store")


def body(spec: dict) -> dict:
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": "warm", "namespace": "team-a", "uid": "uid-1", "generation": 1},
            "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}, **spec}}


def errors(spec: dict, config: RuntimeConfig = CLUSTER) -> list[str]:
    return store_uri_errors(parse_task(body(spec)), config)


@pytest.mark.parametrize("uri", ["s3://fedtask/tasks/team-a/base/model.safetensors",
                                 "s3://fedtask/tasks/team-a/other-task/uid-0/round-0005/global.safetensors",
                                 "/models/base.safetensors", ""])
def test_the_own_namespace_and_non_store_paths_are_allowed(uri):
    assert errors({"model": {"name": "mlp", "initialUri": uri}}) == []
    assert errors({"data": {"dataset": "digits", "shared": {"uri": uri}}}) == []


@pytest.mark.parametrize("uri", ["s3://fedtask/tasks/team-b/t/u/round-0003/global.safetensors",
                                 "s3://fedtask/tasks/team-a-b/model.safetensors",  # a namespace starting with ours
                                 "s3://fedtask/tasks/team-a",  # the prefix itself, not an object under it
                                 "s3://fedtask/tasks/team-a/../team-b/model.safetensors",
                                 "s3://fedtask/tasks/team-a//x", "s3://fedtask/tasks/team-a/./x",
                                 "s3://fedtask/other/team-a/model.safetensors", "s3://elsewhere/team-a/model"])
def test_any_other_store_object_is_refused_with_the_field_and_the_allowed_prefix(uri):
    (initial,) = errors({"model": {"name": "mlp", "initialUri": uri}})
    assert initial.startswith("spec.model.initialUri: ") and repr(uri) in initial
    (shared,) = errors({"data": {"dataset": "digits", "shared": {"uri": uri}}})
    assert shared.startswith("spec.data.shared.uri: ")
    if ".." not in uri and "//x" not in uri and "/./" not in uri:
        assert "s3://fedtask/tasks/team-a/" in shared and "--store-uri-allow" in shared


def test_the_operators_allowlist_adds_prefixes():
    assert errors({"model": {"name": "mlp", "initialUri": "s3://models/public/resnet.safetensors"}}, ALLOWING) == []
    (error,) = errors({"model": {"name": "mlp", "initialUri": "s3://models/private/x"}}, ALLOWING)
    assert "s3://models/public/" in error


def test_the_local_runtime_is_not_checked():
    assert errors({"model": {"name": "mlp", "initialUri": "s3://fedtask/tasks/team-b/x"}}, LOCAL) == []


def test_issued_credentials_serve_only_the_operators_store_unless_the_task_brings_its_own():
    for field, value in (("bucket", "mine"), ("prefix", "p"), ("endpoint", "s3.example.com:443")):
        (error,) = errors({"storage": {field: value}}, ISSUING)
        assert error.startswith(f"spec.storage.{field}: ") and "spec.storage.secretRef" in error
        assert errors({"storage": {field: value, "secretRef": {"name": "own"}}}, ISSUING) == []
        assert errors({"storage": {field: value}}, CLUSTER) == []  # a shared Secret: the old behaviour


def test_the_planner_fails_such_a_task_before_any_pod_with_invalid_spec():
    now = datetime(2026, 12, 3, tzinfo=UTC)
    task = body({"model": {"name": "mlp", "initialUri": "s3://fedtask/tasks/team-b/t/u/round-0009/global"}})
    plan = plan_task(task, Observed(pods=[], now=now), CLUSTER)
    assert plan.create == [] and plan.status["phase"] == "Failed"
    failed = conditions.get_condition(plan.status["conditions"], conditions.FAILED)
    assert failed["reason"] == conditions.REASON_INVALID_SPEC and "team-b" in failed["message"]
    assert [event.reason for event in plan.events] == [conditions.REASON_INVALID_SPEC]
    fine = body({"model": {"name": "mlp", "initialUri": "s3://fedtask/tasks/team-a/base/model.safetensors"}})
    assert plan_task(fine, Observed(pods=[], now=now), CLUSTER).create  # the init pod
