"""The operator's I/O: observe a task, call the planner (and the scheduler), apply the plan through the API.

Handlers (handlers.py) only call `Reconciler.request(namespace, name, views)`. One reconcile:
1. take the task from the index, or our own last write while the index lags behind it (no request);
2. observe its pods (kopf index, kept current by the watch) and the nodes;
3. `plan_task`; if it needs devices, select devices jointly for every task in the Scheduling stage and plan again;
4. `apply_plan` (core/apply.py: status, creations, deletions, events, task deletion) through the API.

Reconciles of one task never overlap: a request during a run marks the task dirty and the run repeats.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from fedtask_operator.core.apply import Applied, apply_plan
from fedtask_operator.core.naming import TASK_LABEL
from fedtask_operator.core.phases import SCHEDULING
from fedtask_operator.core.planner import Event, Observed, Plan, plan_task
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling.select import select_devices
from fedtask_operator.core.spec import GROUP, KIND, PLURAL, VERSION
from fedtask_operator.kube import metrics

logger = logging.getLogger("fedtask.operator")
MAX_PASSES = 8  # consecutive plans without new pod events (status-only steps) before waiting for an event


@dataclasses.dataclass
class ClusterView:
    """What the kopf indexes hold right now (handlers pass them in)."""

    task_pods: dict  # (namespace, task) -> pods
    nodes: Iterable[dict]
    pods: Iterable[dict]  # every watched pod (resource accounting)
    tasks: dict  # (namespace, name) -> task bodies


def owning_task(pod: dict) -> str | None:
    """The FederatedTask that controls a pod (owner reference first, the task label as a fallback)."""
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == KIND and owner.get("apiVersion", "").startswith(GROUP + "/"):
            return owner.get("name")
    return (pod.get("metadata", {}).get("labels") or {}).get(TASK_LABEL)


def build_status_patch(old: dict, new: dict) -> dict:
    """A JSON merge patch (RFC 7386) turning `old` into `new`; lists and scalars are replaced whole."""
    patch: dict = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = build_status_patch(before, value)
            if nested:
                patch[key] = nested
        elif value != before or key not in old:
            patch[key] = value
    return patch


def build_runtime_config(config) -> RuntimeConfig:
    """The pod builder's settings from the operator's flags/environment (kube.cli.OperatorConfig)."""
    prefix = config.store_prefix.strip("/")
    base = f"s3://{config.store_bucket}" + (f"/{prefix}" if prefix else "")
    return RuntimeConfig(image=config.image, image_pull_policy=config.image_pull_policy, store_base_uri=base,
                         s3_endpoint=config.store_endpoint, s3_secure=config.store_secure,
                         s3_region=config.store_region, credentials_secret=config.store_secret,
                         keep_finished_pods=config.clean_pod_policy == "None")


class KubeApi:
    """The few API calls the operator makes (besides kopf's watches, peering and event posting)."""

    def __init__(self, request_timeout: float = 30.0):
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        self._client = kubernetes.client.ApiClient()
        self._client.user_agent = "fedtask-operator"
        self._core = kubernetes.client.CoreV1Api(self._client)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)
        self._exception = kubernetes.client.ApiException
        self._timeout = request_timeout

    @staticmethod
    def _json(response) -> dict:
        import json

        return json.loads(response.data or b"{}")

    async def patch_task_status(self, namespace: str, name: str, patch: dict) -> dict:
        """Merge-patch the status; returns the task as stored after the patch."""
        return self._json(await asyncio.to_thread(lambda: self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": patch}, _preload_content=False,
            _request_timeout=self._timeout)))

    async def create_pod(self, namespace: str, manifest: dict) -> bool:
        """Create a pod; False when it already exists (a retry of an earlier reconcile)."""
        def call():
            try:
                self._core.create_namespaced_pod(namespace, manifest, _preload_content=False,
                                                 _request_timeout=self._timeout)
                return True
            except self._exception as error:
                if error.status == 409:
                    return False
                raise
        return await asyncio.to_thread(call)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        def call():
            try:
                self._core.delete_namespaced_pod(name, namespace, _preload_content=False,
                                                 _request_timeout=self._timeout)
                return True
            except self._exception as error:
                if error.status == 404:
                    return False
                raise
        return await asyncio.to_thread(call)

    async def delete_task(self, namespace: str, name: str) -> bool:
        """Delete the task (spec.ttlSecondsAfterFinished); False when it is already gone."""
        def call():
            try:
                self._custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                             _preload_content=False, _request_timeout=self._timeout)
                return True
            except self._exception as error:
                if error.status == 404:
                    return False
                raise
        return await asyncio.to_thread(call)

    async def list_all_pods(self) -> list[dict]:
        """Every pod in the cluster (resource accounting when the watch covers only some namespaces)."""
        def call():
            return self._json(self._core.list_pod_for_all_namespaces(
                _preload_content=False, _request_timeout=self._timeout)).get("items", [])
        return await asyncio.to_thread(call)


class Reconciler:
    def __init__(self, api: KubeApi, runtime_config: RuntimeConfig, clusterwide: bool, post_event):
        self.api = api
        self.runtime_config = runtime_config
        self.clusterwide = clusterwide
        self.post_event = post_event  # post_event(task_body, type, reason, message)
        self._running: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._views: ClusterView | None = None
        # Our own last status write per task, and the versions it superseded: the watch (and so the index) may not
        # have delivered our write yet, and planning from the older version would repeat a step.
        self._written: dict[tuple[str, str], dict] = {}
        self._superseded: dict[tuple[str, str], set[str]] = {}

    async def request(self, namespace: str, name: str, views: ClusterView) -> None:
        key = (namespace, name)
        self._views = views
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        try:
            passes = 0
            self._dirty.add(key)
            while key in self._dirty and passes < MAX_PASSES:
                self._dirty.discard(key)
                passes += 1
                if await self._reconcile(namespace, name, self._views):
                    self._dirty.add(key)
        finally:
            self._running.discard(key)
            self._dirty.discard(key)

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)
        self._superseded.pop((namespace, name), None)
        timer = self._timers.pop((namespace, name), None)
        if timer is not None:
            timer.cancel()

    def _requeue(self, namespace: str, name: str, seconds: float) -> None:
        key = (namespace, name)
        previous = self._timers.pop(key, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(
            max(0.0, seconds), lambda: asyncio.ensure_future(self.request(namespace, name, self._views)))

    async def _reconcile(self, namespace: str, name: str, views: ClusterView) -> bool:
        """One observe-plan-apply pass; True when the status moved without a pod change (plan again at once)."""
        task = self._current_task(namespace, name, views)
        if task is None or task.get("metadata", {}).get("deletionTimestamp"):
            return False
        now = datetime.now(UTC)
        pods = [pod for pod in views.task_pods.get((namespace, name), ()) if owning_task(pod) == name]
        observed = Observed(pods=pods, now=now, nodes=list(views.nodes))
        plan = plan_task(task, observed, self.runtime_config, None)
        if plan.needs_devices:
            plan = await self._plan_with_devices(task, observed, plan, views, now)
        applied = await self.apply(task, plan)
        if plan.requeue_after is not None:
            self._requeue(namespace, name, plan.requeue_after)
        return applied.status_written and not plan.create and not plan.delete

    def _current_task(self, namespace: str, name: str, views: ClusterView) -> dict | None:
        """The newest task we know without a request: the index, or our own write when the index still lags."""
        key = (namespace, name)
        indexed = list(views.tasks.get(key, ()))
        if not indexed:
            return None
        version = indexed[-1].get("metadata", {}).get("resourceVersion")
        if version in self._superseded.get(key, ()) and key in self._written:
            return self._written[key]
        return indexed[-1]

    async def _plan_with_devices(self, task: dict, observed: Observed, plan: Plan, views: ClusterView,
                                 now: datetime) -> Plan:
        """Joint selection: every task waiting in the Scheduling stage asks at once; this task takes its share."""
        key = f"{task['metadata']['namespace']}/{task['metadata']['name']}"
        requests = [plan.device_request] if plan.device_request is not None else []
        for (namespace, name), bodies in list(views.tasks.items()):
            if f"{namespace}/{name}" == key:
                continue
            for body in bodies:
                if (body.get("status") or {}).get("stage") != SCHEDULING:
                    continue
                pods = [pod for pod in views.task_pods.get((namespace, name), ()) if owning_task(pod) == name]
                other = plan_task(body, Observed(pods=pods, now=now, nodes=observed.nodes), self.runtime_config)
                if other.needs_devices and other.device_request is not None:
                    requests.append(other.device_request)
        pods = list(views.pods) if self.clusterwide else await self.api.list_all_pods()
        started = time.perf_counter()
        assignment = select_devices(requests, list(views.nodes), pods, now.timestamp())
        metrics.SCHEDULING_SECONDS.observe(time.perf_counter() - started)
        return plan_task(task, observed, self.runtime_config, assignment.tasks.get(key))

    async def apply(self, task: dict, plan: Plan) -> Applied:
        return await apply_plan(plan, _TaskSink(self, task))

    async def write_status(self, task: dict, new_status: dict) -> bool:
        """Patch the status when it changed, and remember our write until the watch delivers it."""
        patch = build_status_patch(task.get("status") or {}, new_status)
        if not patch:
            return False
        namespace, name = task["metadata"]["namespace"], task["metadata"]["name"]
        stored = await self.api.patch_task_status(namespace, name, patch)
        metrics.record_status_change(namespace, name, task.get("status") or {}, new_status)
        key = (namespace, name)
        superseded = self._superseded.setdefault(key, set())
        superseded.add(task.get("metadata", {}).get("resourceVersion"))
        if key in self._written:
            superseded.add(self._written[key].get("metadata", {}).get("resourceVersion"))
        superseded.discard(stored.get("metadata", {}).get("resourceVersion"))
        self._written[key] = stored
        return True


class _TaskSink:
    """`apply_plan`'s sink for one task: the Kubernetes API (creations and deletions overlap)."""

    def __init__(self, reconciler: Reconciler, task: dict):
        self.reconciler, self.task = reconciler, task
        self.namespace, self.name = task["metadata"]["namespace"], task["metadata"]["name"]

    async def write_status(self, status: dict) -> bool:
        return await self.reconciler.write_status(self.task, status)

    async def create_pods(self, manifests: list[dict]) -> int:
        api = self.reconciler.api
        return sum(await asyncio.gather(*(api.create_pod(self.namespace, manifest) for manifest in manifests)))

    async def delete_pods(self, names: list[str]) -> int:
        api = self.reconciler.api
        return sum(await asyncio.gather(*(api.delete_pod(self.namespace, name) for name in names)))

    async def post_events(self, events: list[Event]) -> None:
        for event in events:
            self.reconciler.post_event(self.task, event.type, event.reason, event.message)

    async def delete_task(self) -> None:
        await self.reconciler.api.delete_task(self.namespace, self.name)


def delete_store_objects(task_body: dict, runtime_config: RuntimeConfig, access_key: str, secret_key: str) -> int:
    """Delete every object of one task incarnation (B = <storeBase>/<namespace>/<task>/<uid>); returns the count.

    Only with `--cleanup-store`: the operator then needs the store credentials itself (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY in its environment)."""
    import minio
    from minio.deleteobjects import DeleteObject

    from fedtask_operator.core.naming import split_s3_uri, store_base
    from fedtask_operator.core.spec import parse_task

    base = store_base(parse_task(task_body), runtime_config)
    if not base.startswith("s3://"):
        return 0
    bucket, prefix = split_s3_uri(base)
    endpoint = parse_task(task_body).spec.storage.endpoint or runtime_config.s3_endpoint
    client = minio.Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=runtime_config.s3_secure,
                         region=runtime_config.s3_region or None)
    names = [obj.object_name for obj in client.list_objects(bucket, prefix=prefix + "/", recursive=True)]
    errors = list(client.remove_objects(bucket, [DeleteObject(name) for name in names]))
    if errors:
        raise RuntimeError(f"store cleanup of {base}: {len(errors)} objects not deleted, first: {errors[0]}")
    return len(names)
