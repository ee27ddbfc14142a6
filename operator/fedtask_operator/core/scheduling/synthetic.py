"""Node and pod objects in `kubectl get -o json` form for tests, benchmarks and demos (pure, seeded)."""
from __future__ import annotations

import random

from ..kube_types import KubeObject
from ..naming import DEVICE_LABEL, HOSTNAME_LABEL, STAGE_LABEL, STAGE_TRAIN, TASK_LABEL
from ..phases import POD_RUNNING

POOL_LABEL = "fedtask.io/pool"
GPU_PRODUCTS = ("NVIDIA-A100-SXM4-40GB", "Tesla-T4", "NVIDIA-L4", "NVIDIA-H100-80GB-HBM3")


def make_node(name: str, cpu: str | int = "4", memory: str | int = "16Gi", gpus: int = 0,
              gpu_product: str | None = None, ready: bool = True, unschedulable: bool = False,
              taints: list[KubeObject] | None = None, labels: dict[str, str] | None = None,
              extra: dict[str, str | int] | None = None, pods: str | int = "110") -> KubeObject:
    allocatable: dict[str, str | int] = {"cpu": cpu, "memory": memory, "pods": pods, **(extra or {})}
    node_labels = {HOSTNAME_LABEL: name, DEVICE_LABEL: "true", **(labels or {})}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
        if gpu_product:
            node_labels["nvidia.com/gpu.product"] = gpu_product
    node: KubeObject = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels},
        "spec": {},
        "status": {"allocatable": allocatable, "capacity": dict(allocatable),
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    if unschedulable:
        node["spec"]["unschedulable"] = True
    if taints:
        node["spec"]["taints"] = taints
    return node


def make_pod(name: str, node: str, requests: dict[str, str | int] | None = None, namespace: str = "default",
             phase: str = POD_RUNNING, labels: dict[str, str] | None = None,
             init_requests: dict[str, str | int] | None = None) -> KubeObject:
    spec: KubeObject = {"nodeName": node,
                        "containers": [{"name": "main", "resources": {"requests": dict(requests or {})}}]}
    if init_requests:
        spec["initContainers"] = [{"name": "init", "resources": {"requests": dict(init_requests)}}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": spec, "status": {"phase": phase}}


def make_train_pod(task: str, node: str, device: str | None = None, phase: str = POD_RUNNING,
                   requests: dict[str, str | int] | None = None) -> KubeObject:
    """A running train pod of `task` ("namespace/name") on `node`."""
    namespace, name = task.split("/", 1)
    return make_pod(f"{name}-r0001-train-{device or node}", node, requests or {"cpu": "500m"}, namespace, phase,
                    labels={TASK_LABEL: name, STAGE_LABEL: STAGE_TRAIN})


def make_fleet(count: int, seed: int = 0, pools: int = 10, gpu_share: float = 0.2, not_ready_share: float = 0.02,
               cordoned_share: float = 0.01, tainted_share: float = 0.05, pods_per_node: float = 1.0,
               ) -> tuple[list[KubeObject], list[KubeObject]]:
    """A heterogeneous fleet: CPU sizes 1-32, a share with 1-8 GPUs of several products, some NotReady, cordoned or
    tainted, nodes spread over `pools` (label fedtask.io/pool=pool-K), plus running system pods."""
    rng = random.Random(seed)
    nodes: list[KubeObject] = []
    pods: list[KubeObject] = []
    for i in range(count):
        name = f"node-{i:05d}"
        gpus = rng.choice((1, 1, 2, 4, 8)) if rng.random() < gpu_share else 0
        taints = [{"key": "dedicated", "value": "ml", "effect": rng.choice(("NoSchedule", "NoExecute"))}] \
            if rng.random() < tainted_share else None
        nodes.append(make_node(
            name, cpu=str(rng.choice((1, 2, 4, 8, 16, 32))), memory=f"{rng.choice((4, 8, 16, 64))}Gi", gpus=gpus,
            gpu_product=rng.choice(GPU_PRODUCTS) if gpus else None, ready=rng.random() >= not_ready_share,
            unschedulable=rng.random() < cordoned_share, taints=taints,
            labels={POOL_LABEL: f"pool-{i % pools}"},
        ))
        for j in range(int(pods_per_node) + (rng.random() < pods_per_node % 1)):
            pods.append(make_pod(f"sys-{i}-{j}", name, {"cpu": rng.choice(("100m", "250m", "500m")),
                                                        "memory": rng.choice(("128Mi", "512Mi", "1Gi"))},
                                 namespace="kube-system"))
    return nodes, pods
