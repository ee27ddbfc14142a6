"""The Kubernetes API as the operator's Reconciler (kube/reconciler.py) uses it, in memory, for unit tests.

`FakeKubeApi` stands in for the Kubernetes API server (not for our logic): it stores tasks and pods, bumps
resourceVersions, applies merge patches as RFC 7386 says, and answers like `KubeApi` (False on AlreadyExists and
NotFound). The kopf indexes are snapshots of that store (`FakeKubeApi.views`). `reconciler_for` builds a real
Reconciler on it, with kopf's event poster replaced by a recorder."""
from __future__ import annotations

import asyncio
import copy
import itertools
import json

from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling.synthetic import make_node
from fedtask_operator.kube.reconciler import ClusterView, PodCreationRefused, Reconciler, StatusConflict

CONFIG = RuntimeConfig(store_base_uri="s3://fedtask/tasks")
KEY = ("default", "mnist")
NODES = [make_node("node-a"), make_node("node-b")]


def make_task(**spec) -> dict:
    body = {"model": {"name": "mlp"}, "data": {"dataset": "digits"}, "devices": {"count": 4, "perRound": 2},
            "rounds": {"max": 3, "timeoutSeconds": 60}, "podRetryLimit": 1, **spec}
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": "mnist", "namespace": "default", "uid": "uid-1", "generation": 1,
                         "resourceVersion": "1"},
            "spec": body}


def merge_patch(target, patch):
    """RFC 7386 section 2, as an API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKubeApi:
    """The Kubernetes API as the reconciler uses it, in memory. `calls` lists every call in order."""

    def __init__(self, *tasks: dict):
        self.tasks = {(t["metadata"]["namespace"], t["metadata"]["name"]): copy.deepcopy(t) for t in tasks}
        self.pods: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple] = []
        self.task_deleted = asyncio.Event()
        self.refuse: tuple[int, str] | None = None  # (status, message) the server answers every pod creation with
        self._versions = itertools.count(100)

    async def patch_task_status(self, namespace: str, name: str, patch: dict,
                                resource_version: str | None = None) -> dict:
        self.calls.append(("patch_task_status", name, copy.deepcopy(patch)))
        task = self.tasks[(namespace, name)]
        if resource_version is not None and resource_version != task["metadata"]["resourceVersion"]:
            raise StatusConflict(f"{name}: the object has been modified")  # 409, as KubeApi answers it
        task["status"] = merge_patch(task.get("status") or {}, patch)
        task["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(task)

    async def create_pod(self, namespace: str, manifest: dict, guard=None) -> bool:
        if guard is not None:  # as KubeApi: the guard runs right before the request goes out
            guard()
        name = manifest["metadata"]["name"]
        self.calls.append(("create_pod", name))
        if self.refuse is not None:
            raise PodCreationRefused(*self.refuse)  # as KubeApi answers a 403, 422, ...
        if (namespace, name) in self.pods:
            return False  # 409 AlreadyExists
        self.pods[(namespace, name)] = {**copy.deepcopy(manifest), "status": {"phase": "Pending"}}
        return True

    async def delete_pod(self, namespace: str, name: str, guard=None) -> bool:
        if guard is not None:
            guard()
        self.calls.append(("delete_pod", name))
        return self.pods.pop((namespace, name), None) is not None  # 404 NotFound: False

    async def delete_task(self, namespace: str, name: str) -> bool:
        self.calls.append(("delete_task", name))
        found = self.tasks.pop((namespace, name), None) is not None
        self.task_deleted.set()
        return found

    # -- what the tests do to the cluster
    def views(self, nodes=NODES) -> ClusterView:
        """The kopf indexes, up to date with the store right now (a snapshot: later changes do not show)."""
        task_pods: dict = {}
        for (namespace, _), pod in self.pods.items():
            task = pod["metadata"]["labels"]["fedtask.io/task"]
            task_pods.setdefault((namespace, task), []).append(copy.deepcopy(pod))
        return ClusterView(task_pods=task_pods, nodes=copy.deepcopy(nodes),
                           pods=[copy.deepcopy(pod) for pod in self.pods.values()],
                           tasks={key: [copy.deepcopy(task)] for key, task in self.tasks.items()})

    def succeed(self, name: str, result: dict) -> None:
        self.pods[("default", name)]["status"] = {"phase": "Succeeded", "containerStatuses": [
            {"name": "worker", "state": {"terminated": {"exitCode": 0, "message": json.dumps(result)}}}]}

    def verbs(self) -> list[str]:
        return [call[0] for call in self.calls]

    def pod_names(self) -> list[str]:
        return sorted(name for _, name in self.pods)

    @property
    def status(self) -> dict:
        return self.tasks[KEY].get("status") or {}


class Events:
    """kopf.event as the handlers pass it in: records (reason, type)."""

    def __init__(self):
        self.posted: list[tuple[str, str]] = []
        self.messages: list[str] = []

    def __call__(self, body: dict, type_: str, reason: str, message: str) -> None:
        self.posted.append((reason, type_))
        self.messages.append(message)

    def reasons(self) -> list[str]:
        return [reason for reason, _ in self.posted]


def reconciler_for(api: FakeKubeApi, config: RuntimeConfig = CONFIG, clusterwide: bool = True):
    events = Events()
    return Reconciler(api, config, clusterwide, events), events


INIT_RESULT = {"uri": "s3://fedtask/tasks/default/mnist/uid-1/round-0000/global.safetensors", "bytes": 10,
               "seconds": 0.1}


async def started_round_one(api: FakeKubeApi, reconciler: Reconciler) -> None:
    """Create the task's init pod, let it succeed, and start round 1 (the init result is then in the status)."""
    await reconciler.request(*KEY, api.views())
    api.succeed("mnist-init", INIT_RESULT)
    await reconciler.request(*KEY, api.views())
    assert api.status["stage"] == "Training" and api.status["round"] == 1
