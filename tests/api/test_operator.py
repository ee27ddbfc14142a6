"""Scenarios against the real operator (`fedtask operator` subprocess) + kmock + moto S3 + a process kubelet."""
from __future__ import annotations

import copy

import pytest

from fedtask_operator import conditions
from tests.support.kube import FEDERATEDTASKS, PODS, make_node
from tests.support.operator import metric_value, task_events, task_status, wait_for

pytestmark = pytest.mark.api

DEVICE = {"fedtask.io/device": "true"}


def digits_task(name: str, rounds: int = 3, **spec_overrides) -> dict:
    """A tiny task: 8x8 digits, an MLP, 4 simulated devices, 2 per round."""
    spec = {
        "model": {"name": "mlp", "args": {"hidden": 16}},
        "data": {"dataset": "digits", "partition": {"scheme": "iid"}, "shared": {"fraction": 0.05}},
        "devices": {"count": 4, "perRound": 2, "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}},
        "training": {"localEpochs": 1, "batchSize": 32},
        "adjustment": {"enabled": True, "epochs": 1},
        "rounds": {"max": rounds},
        "backoffLimit": 1,
    }
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def finished(cluster, name):
    status = task_status(cluster, name)
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def test_a_three_round_task_succeeds_with_history_model_and_metrics(cluster, operator, kubelet):
    cluster.apply(make_node("node-a", labels=DEVICE))
    cluster.apply(make_node("node-b", labels=DEVICE))
    cluster.apply(digits_task("digits"))

    status = wait_for(lambda: finished(cluster, "digits"), timeout=150, what="the task to finish")

    assert status["phase"] == "Succeeded", status
    assert [record["round"] for record in status["history"]] == [1, 2, 3]
    assert all(len(record["returned"]) == 2 for record in status["history"])
    assert status["model"]["uri"].startswith("s3://fedtask/")
    assert 0.0 < status["accuracy"] <= 1.0
    assert conditions.is_true(status["conditions"], conditions.SUCCEEDED)
    reasons = [event["reason"] for event in task_events(cluster, "digits")]
    assert reasons, "no events posted"
    text = operator.metrics()
    assert metric_value(text, "fedtask_rounds_total", namespace="default", task="digits") == 3.0
    assert metric_value(text, "fedtask_task_round", namespace="default", task="digits") == 3.0
    assert metric_value(text, "fedtask_task_accuracy", namespace="default", task="digits") == pytest.approx(
        status["history"][-1]["accuracy"])
    assert metric_value(text, "fedtask_round_duration_seconds_count", namespace="default", task="digits",
                        stage="round") == 3.0
    assert metric_value(text, "fedtask_update_bytes_total", namespace="default", task="digits") > 0
    # every pod ran exactly once (no failures were injected) and pods carry the owner reference
    assert len(kubelet.started) == len(set(kubelet.started))
    owners = {ref["uid"] for pod in cluster.history(PODS) for ref in pod["metadata"].get("ownerReferences", [])}
    assert owners == {cluster.get(FEDERATEDTASKS, "default", "digits")["metadata"]["uid"]}
