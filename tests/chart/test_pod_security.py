"""The Pod Security levels the chart README promises per data source, checked on the pods the operator really
builds (fedtask_operator.core.pods), and the chart's task-pod NetworkPolicy selects those pods."""
from __future__ import annotations

import pytest

from fedtask_operator.core.pods import RuntimeConfig, build_init_pod, build_publish_pod, build_train_pod
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.spec import parse_task
from tests.support.tools import CHART, Tools, helm_template

CONFIG = RuntimeConfig(image="fedtask-worker:0.1.0", store_base_uri="s3://fedtask/tasks", s3_endpoint="minio:9000",
                       s3_region="us-east-1", credentials_secret="fedtask-s3")
# Pod Security Standards: volume types the restricted level allows (baseline additionally forbids only hostPath).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def pod_security_level(pod: dict) -> str:
    """The most restrictive Pod Security Standard level the pod meets (the checks this project's pods can trip)."""
    spec = pod["spec"]
    volume_types = {key for volume in spec.get("volumes", []) for key in volume if key != "name"}
    if ("hostPath" in volume_types or spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")
            or any((c.get("securityContext") or {}).get("privileged") for c in spec["containers"])):
        return "privileged"
    pod_context = spec.get("securityContext") or {}
    restricted = volume_types <= RESTRICTED_VOLUMES and pod_context.get("seccompProfile", {}).get("type") in (
        "RuntimeDefault", "Localhost")
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container.get("securityContext") or {}
        restricted &= context.get("allowPrivilegeEscalation") is False
        restricted &= context.get("capabilities", {}).get("drop") == ["ALL"]
        restricted &= bool(context.get("runAsNonRoot", pod_context.get("runAsNonRoot")))
        restricted &= not any(port.get("hostPort") for port in container.get("ports", []))
    return "restricted" if restricted else "baseline"


def make_task(spec: dict):
    return parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "mnist", "namespace": "team-a", "uid": "uid-1"},
                       "spec": spec, "status": {"round": 3, "shardCount": 4}})


CASES = {  # README row -> (task spec, pod builder, level the README promises)
    "builtin": ({"data": {"source": "builtin"}}, "train", "restricted"),
    "pvc": ({"data": {"source": "pvc", "claimName": "data-{node}"}}, "train", "restricted"),
    "hostPath": ({"data": {"source": "hostPath", "hostPath": "/var/lib/fedtask/data"}}, "train", "privileged"),
    "publish.toDevices": ({"publish": {"toDevices": True, "hostPath": "/var/lib/fedtask/models"}}, "publish",
                          "privileged"),
}


def build(kind: str, task) -> dict:
    if kind == "train":
        device = "d001" if task.spec.data.source == "builtin" else "node-a"  # a shard, or the node itself
        return build_train_pod(task, CONFIG, 3, DeviceSlot(device=device, node="node-a"))
    return build_publish_pod(task, CONFIG, "node-a", "s3://fedtask/tasks/team-a/mnist/uid-1/round-0003/global.safetensors")


@pytest.mark.parametrize("case", sorted(CASES))
def test_task_pods_need_the_pod_security_level_the_readme_states(case: str) -> None:
    spec, kind, promised = CASES[case]
    assert pod_security_level(build(kind, make_task(spec))) == promised
    readme_rows = [line for line in (CHART / "README.md").read_text().splitlines() if line.startswith(f"| `{case}")
                   or line.startswith(f"| `data.source: {case}`")]
    assert readme_rows and f"**{promised}**" in readme_rows[0], f"README row for {case}: {readme_rows}"


def test_server_side_pods_are_restricted() -> None:
    assert pod_security_level(build_init_pod(make_task({}), CONFIG)) == "restricted"


def test_the_checker_can_tell_the_levels_apart() -> None:
    pod = build(kind="train", task=make_task({}))
    assert pod_security_level(pod) == "restricted"
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert pod_security_level(pod) == "baseline"
    pod["spec"]["volumes"] = [{"name": "x", "hostPath": {"path": "/"}}]
    assert pod_security_level(pod) == "privileged"


def test_task_pod_network_policy_selects_the_task_pods(tools: Tools) -> None:
    [policy] = [obj for obj in helm_template(tools) if obj["kind"] == "NetworkPolicy"
                and obj["metadata"]["name"].endswith("-task-pods")]
    [expression] = policy["spec"]["podSelector"]["matchExpressions"]
    assert expression["operator"] == "Exists"
    for kind, task in (("train", make_task({})), ("publish", make_task({"publish": {"toDevices": True}}))):
        assert expression["key"] in build(kind, task)["metadata"]["labels"]
    assert expression["key"] in build_init_pod(make_task({}), CONFIG)["metadata"]["labels"]
