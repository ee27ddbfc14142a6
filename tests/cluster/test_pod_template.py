"""Issue 15: `spec.podTemplate` and `spec.server` end to end on a real control plane. A one-round digits task on two
simulated devices (the `helm test` hook's task) carries a label, an annotation, extra env vars and a ConfigMap volume
mounted into the worker, plus the server-side pods' own resources; the pods kube-apiserver stores are checked.

The model is the user's own code from that ConfigMap (`spec.model.name: user_model:build`, found through the
template's PYTHONPATH), so the task succeeds only if the volume really reached every pod that builds the model. The
node agents run pods as processes: they honour ConfigMap, Secret, PVC and emptyDir volumes (a mount path is rewritten
to the folder the agent wrote the ConfigMap's keys to, in the command line and in env values such as PYTHONPATH)."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.support.cluster import NAMESPACE, LocalCluster, PodRecorder, wait_for_phase

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

NAME = "pod-template"
LABEL = ("cost.example.com/team", "fl-research")
ANNOTATION = ("sidecar.istio.io/inject", "false")
ENV = ("USER_SETTING", "from-the-template")
CONFIG_MAP = "pod-template-code"
MOUNT = "/opt/user-code"
USER_MODEL = """\
import math

from torch import nn


def build(input_shape, num_classes, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
"""
SERVER_RESOURCES = {"requests": {"cpu": "150m", "memory": "300Mi"}, "limits": {"memory": "600Mi"}}
DEVICE_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}


def task_manifest() -> dict:
    return {
        "apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "user_model:build", "args": {"hidden": 12}},
            "data": {"dataset": "digits", "shared": {"fraction": 0.05}},
            "devices": {"count": 2, "perRound": 2, "resources": DEVICE_RESOURCES},
            "rounds": {"max": 1},
            "server": {"resources": SERVER_RESOURCES},
            "podTemplate": {
                "metadata": {"labels": dict([LABEL]), "annotations": dict([ANNOTATION])},
                "env": [{"name": ENV[0], "value": ENV[1]}, {"name": "PYTHONPATH", "value": MOUNT}],
                "volumes": [{"name": "user-code", "configMap": {"name": CONFIG_MAP}}],
                "volumeMounts": [{"name": "user-code", "mountPath": MOUNT, "readOnly": True}],
            },
        },
    }


def worker(pod: dict) -> dict:
    [container] = pod["spec"]["containers"]
    return container


def test_pod_template_and_server_resources_reach_every_stored_pod(cluster: LocalCluster):
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
                  "data": {"user_model.py": USER_MODEL}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(config_map))
    with PodRecorder(cluster, NAME) as recorder:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(task_manifest()))
        task = wait_for_phase(cluster, NAME, timeout=300)
    assert task["status"]["phase"] == "Succeeded", task["status"]
    assert not recorder.errors, recorder.errors

    stages = {}
    for name, pod in recorder.pods.items():
        stages.setdefault(pod["metadata"]["labels"].get("fedtask.io/stage"), []).append(name)
    # every kind of pod this task has: the server side (init, aggregate, adjust: digits has a shared fraction) and train
    assert {"init", "train", "aggregate", "adjust"} <= set(stages), stages
    assert len(stages["train"]) >= 2, stages

    for name, pod in recorder.pods.items():
        stage = pod["metadata"]["labels"].get("fedtask.io/stage")
        assert pod["metadata"]["labels"].get(LABEL[0]) == LABEL[1], (name, pod["metadata"]["labels"])
        assert pod["metadata"]["labels"]["fedtask.io/task"] == NAME, name  # fedtask's own labels stay
        assert (pod["metadata"].get("annotations") or {}).get(ANNOTATION[0]) == ANNOTATION[1], name
        container = worker(pod)
        env = {e["name"]: e for e in container.get("env") or []}
        assert env.get(ENV[0]) == {"name": ENV[0], "value": ENV[1]}, (name, sorted(env))
        assert any(e.startswith("FEDTASK_") for e in env), (name, sorted(env))  # fedtask's env is kept too
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        assert volumes.get("user-code", {}).get("configMap", {}).get("name") == CONFIG_MAP, (name, volumes)
        mounts = {m["name"]: m for m in container.get("volumeMounts") or []}
        assert mounts.get("user-code", {}).get("mountPath") == MOUNT, (name, mounts)
        assert mounts["user-code"].get("readOnly") is True, (name, mounts)
        # the hardening is kept: the template adds, it does not replace
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        resources = container.get("resources") or {}
        if stage == "train":
            assert resources.get("requests") == DEVICE_RESOURCES["requests"], (name, resources)
        else:
            assert resources == SERVER_RESOURCES, (name, stage, resources)
    assert any(pod["status"].get("phase") == "Succeeded" for pod in recorder.pods.values())

    cluster.kubectl("delete", "federatedtask", NAME, "-n", NAMESPACE, "--wait=true", "--timeout=120s")
    cluster.kubectl("delete", "configmap", CONFIG_MAP, "-n", NAMESPACE)
