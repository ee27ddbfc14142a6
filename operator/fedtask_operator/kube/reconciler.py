"""The operator's I/O: observe a task, call the planner (and the scheduler), apply the plan through the API.

Handlers (handlers.py) only call `Reconciler.request(namespace, name, views)`. One reconcile:
1. take the task from the index, or our own last write while the index lags behind it (no request);
2. observe its pods (kopf index, kept current by the watch) and the nodes;
3. `plan_task`; if it needs devices and its learning period is due (the collection window,
   core/scheduling/collection.py), select devices jointly for every task that needs devices and plan each of them
   again with its share of the one decision;
4. `apply_plan` (core/apply.py: status, creations, deletions, events, task deletion) through the API, for this task
   and for the other tasks of the decision (each reserved like a running reconcile while that happens).

Reconciles of one task never overlap: a request during a run marks the task dirty and the run repeats.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from fedtask_operator.core.apply import Applied, apply_plan
from fedtask_operator.core.confinement import Confinement
from fedtask_operator.core.naming import TASK_LABEL
from fedtask_operator.core.phases import FINISHED_PHASES, SCHEDULING, SUSPENDED
from fedtask_operator.core.planner import CreationRefusal, Event, Observed, Plan, plan_task
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling.collection import SchedulingConfig, decide_period, next_period_number
from fedtask_operator.core.spec import GROUP, KIND, PLURAL, VERSION
from fedtask_operator.core.store_access import NAMESPACE_SECRET, uses_presigned_urls
from fedtask_operator.kube import metrics

logger = logging.getLogger("fedtask.operator")
CONFLICT_RETRY_SECONDS = 0.5  # after a refused status write: time for the watch to deliver the newer version
MAX_PASSES = 8  # consecutive plans without new pod events (status-only steps) before waiting for an event
RELEASE_DELAY_SECONDS = 5.0  # after a namespace's last task is deleted, before its issued store keys are removed
SUPERSEDED_KEEP = 16  # per task, the newest versions our own writes superseded (older ones the index is long past)


@dataclasses.dataclass
class ClusterView:
    """What the kopf indexes hold right now (handlers pass them in)."""

    task_pods: dict  # (namespace, task) -> pods
    nodes: Iterable[dict]
    pods: Iterable[dict]  # every watched pod (resource accounting)
    tasks: dict  # (namespace, name) -> task bodies


def _task_owner(pod: dict) -> dict | None:
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == KIND and owner.get("apiVersion", "").startswith(GROUP + "/"):
            return owner
    return None


def owning_task(pod: dict) -> str | None:
    """The name of the FederatedTask that controls a pod (owner reference first, the task label as a fallback).

    A name is not an identity: a task deleted and created again under its name is another task. `owned_by` decides
    whether a pod belongs to one task incarnation."""
    owner = _task_owner(pod)
    if owner is not None:
        return owner.get("name")
    return (pod.get("metadata", {}).get("labels") or {}).get(TASK_LABEL)


def owned_by(pod: dict, task: dict) -> bool:
    """Whether `pod` belongs to this incarnation of `task`: its owner reference carries the task's uid.

    A pod of an older task of the same name (its owner reference names a uid that is gone) belongs to nobody we
    plan for: the garbage collector removes it, and a creation that collides with it deletes it first."""
    owner = _task_owner(pod)
    uid = task.get("metadata", {}).get("uid")
    return owner is not None and bool(uid) and owner.get("uid") == uid


def task_pods_of(views: ClusterView, task: dict) -> list[dict]:
    """The pods of this task incarnation from the index (keyed by namespace and task name)."""
    metadata = task.get("metadata", {})
    return [pod for pod in views.task_pods.get((metadata.get("namespace"), metadata.get("name")), ())
            if owned_by(pod, task)]


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
                         s3_region=config.store_region,
                         credentials_secret=NAMESPACE_SECRET if config.namespace_credentials else config.store_secret,
                         namespace_credentials=config.namespace_credentials,
                         presigned_urls=getattr(config, "presigned_urls", False),
                         allowed_uri_prefixes=tuple(p if p.endswith("/") else p + "/" for p in config.store_uri_allow),
                         keep_finished_pods=config.clean_pod_policy == "None",
                         confinement=getattr(config, "confinement", None) or Confinement())


class NotLeader(Exception):
    """This replica does not hold the leader lease (any more): it must not write (kube/lease.py)."""


# On each pod a leader creates: the Lease term it held ("<holder>/<transitions>") and which Lease
# ("<namespace>/<name>"); the chart's admission fence (templates/leader-fence.yaml) checks them.
LEADER_TERM = "fedtask.io/leader-term"
LEADER_LEASE = "fedtask.io/leader-lease"
LEADER_FENCED = "fedtask.io/leader-fenced"  # label ("true") the fence's objectSelector matches: the API server looks
# the Lease up only for such pods, so a missing Lease never blocks any other pod
FENCE_RETRY_SECONDS = 1.0  # a create the fence denied while this replica still holds the Lease is retried after this
FENCE_DENIAL = "fedtask leader fence:"  # how the chart's ValidatingAdmissionPolicy's message starts


def _fence_denial(refusal: PodCreationRefused) -> bool:
    """The chart's leader fence denied the create: 403 "fedtask leader fence: ..." (the pod's term is not the Lease's
    current one), or 422 "no params found" (the policy does not see the Lease yet, e.g. just created). Either way this
    replica's term is not (yet) what the API server admits: NotLeader, not a refusal of the task's pod."""
    message = refusal.message
    return (refusal.code == 403 and FENCE_DENIAL in message) or (
        refusal.code == 422 and "-leader-fence'" in message and "no params found" in message)


class StatusConflict(Exception):
    """The status write named a resourceVersion the task no longer has: it was planned from an older version."""


class PodCreationRefused(Exception):
    """The API server refused to create a pod for a reason other than AlreadyExists (403, 422, 400, 404, ...)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _api_message(error) -> str:
    """The message of a Kubernetes Status body (what `kubectl` prints), else the reason phrase."""
    import json

    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or error.reason or "refused") if isinstance(body, dict) else str(error.reason)


# 4xx answers a retry of the same request will meet again (until someone changes the quota, the policy, the spec):
# the planner reports them and backs off. 409 is handled apart; 408/429 and 5xx are transient and raise.
_REFUSALS = frozenset({400, 403, 404, 405, 413, 422})


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

    @property
    def api_client(self):
        """The kubernetes ApiClient (configuration and connection pool) the other clients share."""
        return self._client

    @staticmethod
    def _json(response) -> dict:
        import json

        return json.loads(response.data or b"{}")

    async def patch_task_status(self, namespace: str, name: str, patch: dict,
                                resource_version: str | None = None) -> dict:
        """Merge-patch the status; returns the task as stored after the patch. With `resource_version`, the API
        server applies the patch only to that version of the task (StatusConflict otherwise)."""
        body: dict = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}

        def call():
            try:
                return self._custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name, body, _preload_content=False,
                    _request_timeout=self._timeout)
            except self._exception as error:
                if error.status == 409:
                    raise StatusConflict(f"{namespace}/{name}: {_api_message(error)}") from error
                raise
        return self._json(await asyncio.to_thread(call))

    async def _done_unless(self, already_done: int, call, refusals: frozenset[int] = frozenset(),
                           guard: Callable[[], None] | None = None) -> bool:
        """Run one write off the event loop: True when it happened, False when the server answers `already_done`
        (409 for a create that an earlier pass made, 404 for a delete of something gone). A status in `refusals`
        raises PodCreationRefused with the server's message. `guard` (the leader fence) runs on the worker thread
        right before the request is sent: a write queued for a thread when the process was paused (SIGSTOP, a
        stalled VM) is checked again when it would go out, after the pause, not only when it was queued."""
        def run() -> bool:
            if guard is not None:
                guard()
            try:
                call()
                return True
            except self._exception as error:
                if error.status == already_done:
                    return False
                if error.status in refusals:
                    raise PodCreationRefused(error.status, _api_message(error)) from error
                raise
        return await asyncio.to_thread(run)

    async def create_pod(self, namespace: str, manifest: dict, guard: Callable[[], None] | None = None) -> bool:
        """Create a pod; False when it already exists (a retry of an earlier reconcile). PodCreationRefused when the
        server refuses it for good (Forbidden, Invalid, ...). `guard`: see `_done_unless`."""
        return await self._done_unless(409, lambda: self._core.create_namespaced_pod(
            namespace, manifest, _preload_content=False, _request_timeout=self._timeout), refusals=_REFUSALS,
            guard=guard)

    async def delete_pod(self, namespace: str, name: str, guard: Callable[[], None] | None = None) -> bool:
        return await self._done_unless(404, lambda: self._core.delete_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=self._timeout), guard=guard)

    async def delete_task(self, namespace: str, name: str) -> bool:
        """Delete the task (spec.ttlSecondsAfterFinished); False when it is already gone."""
        return await self._done_unless(404, lambda: self._custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _preload_content=False, _request_timeout=self._timeout))


class Reconciler:
    def __init__(self, api: KubeApi, runtime_config: RuntimeConfig, clusterwide: bool, post_event,
                 scheduling: SchedulingConfig | None = None, leader=None):
        self.api = api
        # The leader lease (kube/lease.LeaderLease) or None (one replica, no election): only its holder acts, and
        # `fence()` checks it right before each write batch.
        self.leader = leader
        self._deferred: set[tuple[str, str]] = set()  # reconciles asked for while not leading
        # kube/credentials.NamespaceCredentials with --namespace-credentials: a namespace's store keys are issued
        # before its first pod (handlers.startup sets it), else None
        self.store_credentials = None
        self.runtime_config = runtime_config
        self._presigner = None  # kube/presign.Presigner, made on first use with --presigned-urls
        self._releases: set[asyncio.Task] = set()  # namespaces' store keys being removed (release_namespace_keys)
        self.scheduling = scheduling or SchedulingConfig()
        self._last_period = 0  # the highest period number this process gave out (statuses may lag behind it)
        self.clusterwide = clusterwide  # tasks of every namespace, or of some (pods are watched cluster-wide)
        self.post_event = post_event  # post_event(task_body, type, reason, message)
        self._running: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._views: ClusterView | None = None
        # Our own last status write per task, and the versions it superseded: the watch (and so the index) may not
        # have delivered our write yet, and planning from the older version would repeat a step.
        self._written: dict[tuple[str, str], dict] = {}
        self._superseded: dict[tuple[str, str], dict[str, None]] = {}  # an ordered set, SUPERSEDED_KEEP at most
        # What became of the last creations (Observed.creation_refusals for the next plan, which records them in the
        # status) and, after refusals, until when (time.monotonic) this task creates nothing: the backoff. Memory
        # only: after a restart the first creation is tried at once; the give-up time is in the status.
        self._creations: dict[tuple[str, str], tuple[CreationRefusal, ...]] = {}
        self._hold_creations: dict[tuple[str, str], float] = {}

    def presigner(self):
        """The signer of pods' presigned store URLs (the store keys from the operator's environment)."""
        if self._presigner is None:
            from fedtask_operator.kube.presign import Presigner

            config = self.runtime_config
            self._presigner = Presigner(config.s3_endpoint, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                                        os.environ.get("AWS_SECRET_ACCESS_KEY", ""), config.s3_secure,
                                        config.s3_region, timeout=getattr(self.api, "_timeout", 30.0))
        return self._presigner

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

    def may_act(self) -> bool:
        return self.leader is None or self.leader.valid()

    def fence(self) -> None:
        """Raise NotLeader unless this replica holds a valid lease: called right before every write batch, so a
        replica that was paused past its lease (and may have lost it) writes nothing once it resumes."""
        if not self.may_act():
            raise NotLeader(f"not the leader ({self.leader.identity}): the lease expired or is held by another "
                            "replica")

    def leader_annotations(self) -> dict[str, str]:
        """The annotations that name the Lease term this replica holds (none without leader election): a pod created
        with them is admitted by the chart's admission fence only while that term is the Lease's current one."""
        if self.leader is None or not self.leader.term:
            return {}
        config = self.leader.config
        return {LEADER_TERM: self.leader.term, LEADER_LEASE: f"{config.namespace}/{config.name}"}

    def leadership_acquired(self) -> None:
        """This replica just became the leader: forget what it wrote in an earlier term (the store may have moved
        on since) and reconcile every task it knows at once."""
        self._written.clear()
        self._superseded.clear()
        keys = set(self._deferred)
        self._deferred.clear()
        if self._views is not None:
            keys.update(self._views.tasks)
        for namespace, name in sorted(keys):
            self._requeue(namespace, name, 0.0)

    def forget(self, namespace: str, name: str) -> None:
        self._deferred.discard((namespace, name))
        self._written.pop((namespace, name), None)
        self._superseded.pop((namespace, name), None)
        self._creations.pop((namespace, name), None)
        self._hold_creations.pop((namespace, name), None)
        timer = self._timers.pop((namespace, name), None)
        if timer is not None:
            timer.cancel()
        if self.store_credentials is not None and not self._namespace_has_tasks(namespace):
            release = asyncio.get_running_loop().create_task(self.release_namespace_keys(namespace))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)

    def _namespace_has_tasks(self, namespace: str) -> bool:
        """Whether the task index (live: kopf's) still holds a task of the namespace; True when it is unknown."""
        if self._views is None:
            return True
        return any(ns == namespace and bodies for (ns, _), bodies in list(self._views.tasks.items()))

    async def release_namespace_keys(self, namespace: str, delay: float | None = None) -> None:
        """The namespace's last task was deleted: after `delay` (the index settles), remove its issued store keys
        (kube/credentials.NamespaceCredentials.release), unless a task of it is in the index again by then."""
        await asyncio.sleep(RELEASE_DELAY_SECONDS if delay is None else delay)
        if not self.may_act():
            return
        problem = await self.store_credentials.release(namespace, lambda: self._namespace_has_tasks(namespace))
        if problem:
            logger.warning("%s", problem)
        else:
            logger.info("namespace %s has no task left: its issued store keys are removed", namespace)

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
        key = (namespace, name)
        if not self.may_act():
            self._deferred.add(key)  # the leader does it; this replica does it once it leads
            return False
        task = self._current_task(namespace, name, views)
        if task is None or task.get("metadata", {}).get("deletionTimestamp"):
            return False
        now = datetime.now(UTC)
        try:
            return await self._plan_and_apply(namespace, name, task, views, now)
        except NotLeader as lost:
            logger.warning("%s/%s: nothing written: %s", namespace, name, lost)
            self._deferred.add(key)
            if self.may_act() and self._views is not None:
                # the lease is still ours as far as this replica knows: the API server's fence denied the create
                # while its Lease informer lagged behind a new term; try again shortly, not at the next resync
                self._requeue(namespace, name, FENCE_RETRY_SECONDS)
            return False

    async def _plan_and_apply(self, namespace: str, name: str, task: dict, views: ClusterView,
                              now: datetime) -> bool:
        key = (namespace, name)
        pods = task_pods_of(views, task)
        observed = Observed(pods=pods, now=now, nodes=list(views.nodes),
                            creation_refusals=self._creations.pop(key, None))
        plan = plan_task(task, observed, self.runtime_config, None)
        if plan.needs_devices:
            plan, others = await self._plan_with_devices(task, observed, plan, views, now)
            await self._apply_others(others)
        plan = self._backoff_creations(key, plan)
        try:
            applied = await self.apply(task, plan)
        except StatusConflict as conflict:
            # Nothing of the plan was applied (the status comes first): plan again from the newer version, which
            # the watch is delivering (it also brings a pod's or kopf's own write that caused the conflict).
            logger.info("status write refused, planned from an older version; planning again: %s", conflict)
            self._requeue(namespace, name, CONFLICT_RETRY_SECONDS)
            return False
        if plan.requeue_after is not None:
            self._requeue(namespace, name, plan.requeue_after)
        if self._creations.get(key):
            return True  # plan again at once: the planner records the refusals in the status
        return applied.status_written and not plan.create and not plan.delete

    def _backoff_creations(self, key: tuple[str, str], plan: Plan) -> Plan:
        """Start a backoff the plan asks for, and create nothing while one runs (the planner plans the pods anyway)."""
        if plan.hold_creations_seconds is not None:
            self._hold_creations[key] = time.monotonic() + plan.hold_creations_seconds
        wait = self._hold_creations.get(key, 0.0) - time.monotonic()
        if wait <= 0:
            self._hold_creations.pop(key, None)
            return plan
        if not plan.create:
            return plan
        requeue = wait if plan.requeue_after is None else min(wait, plan.requeue_after)
        return dataclasses.replace(plan, create=[], requeue_after=requeue)

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
                                 now: datetime) -> tuple[Plan, list[tuple[dict, Plan]]]:
        """The learning period: once it is due, every task waiting in the Scheduling stage (and not in a reconcile
        of its own) asks at once, in one decision; returns this task's plan and the other tasks' plans, which stay
        reserved (in `_running`) until `_apply_others` has applied them. Before it is due: the plan, requeued then."""
        key = f"{task['metadata']['namespace']}/{task['metadata']['name']}"
        # every pod that holds resources, of every namespace (resource accounting), from the pod watch's summaries
        # in both modes: a namespaced operator watches all pods too (kube/pod_watch.py), no list per pass. Read once,
        # each summary expanded as the accounting reaches it: a list of them all would be ~1 KB per pod per pass.
        pods = views.pods
        requests = [plan.device_request] if plan.device_request is not None else []
        members: dict[str, tuple[dict, Observed]] = {}
        statuses, active = [task.get("status") or {}], [key]
        for namespace, name in list(views.tasks):
            other_key = f"{namespace}/{name}"
            body = self._current_task(namespace, name, views) if other_key != key else None
            if body is None:
                continue
            status = body.get("status") or {}
            statuses.append(status)
            if status.get("phase") not in FINISHED_PHASES and status.get("phase") != SUSPENDED:
                active.append(other_key)
            if status.get("stage") != SCHEDULING or (namespace, name) in self._running:
                continue
            other_observed = Observed(pods=task_pods_of(views, body), now=now, nodes=observed.nodes)
            other = plan_task(body, other_observed, self.runtime_config)
            if other.needs_devices and other.device_request is not None:
                requests.append(other.device_request)
                members[other_key] = (body, other_observed)
        period = max(next_period_number(statuses), self._last_period + 1)
        started = time.perf_counter()
        decision = decide_period(requests, list(views.nodes), pods, now.timestamp(), active=active,
                                 config=self.scheduling, period=period)
        if not decision.due:  # the period still collects tasks: come back when it is due
            retry = min(decision.retry_after or 0.0, plan.requeue_after or math.inf)
            return dataclasses.replace(plan, requeue_after=retry), []
        metrics.SCHEDULING_SECONDS.observe(time.perf_counter() - started)
        self._last_period = period
        others = []
        for other_key, (body, other_observed) in members.items():
            metadata = body["metadata"]
            self._running.add((metadata["namespace"], metadata["name"]))
            others.append((body, plan_task(body, other_observed, self.runtime_config,
                                           decision.assignment.tasks.get(other_key))))
        return plan_task(task, observed, self.runtime_config, decision.assignment.tasks.get(key)), others

    async def _apply_others(self, others: list[tuple[dict, Plan]]) -> None:
        """Apply the other tasks' shares of a decision, each released from its reservation afterwards (and
        reconciled again at once when a change came in meanwhile)."""
        for body, plan in others:
            namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
            try:
                await self.apply(body, plan)
                if plan.requeue_after is not None:
                    self._requeue(namespace, name, plan.requeue_after)
            except NotLeader:
                self._deferred.add((namespace, name))
            except Exception:  # its own reconcile retries; the others of the decision still get theirs
                logger.exception("applying the learning period's plan for %s/%s failed", namespace, name)
                self._dirty.add((namespace, name))
            finally:
                self._running.discard((namespace, name))
                if (namespace, name) in self._dirty:
                    self._dirty.discard((namespace, name))
                    self._requeue(namespace, name, 0.0)

    async def apply(self, task: dict, plan: Plan) -> Applied:
        """Apply a plan through the API; what became of its creations goes to the task's next plan."""
        sink = _TaskSink(self, task, self._views)
        applied = await apply_plan(plan, sink)
        if plan.create:
            self._creations[(sink.namespace, sink.name)] = tuple(sink.refused)
        return applied

    async def write_status(self, task: dict, new_status: dict) -> bool:
        """Patch the status when it changed, and remember our write until the watch delivers it."""
        patch = build_status_patch(task.get("status") or {}, new_status)
        if not patch:
            return False
        namespace, name = task["metadata"]["namespace"], task["metadata"]["name"]
        key = (namespace, name)
        try:
            # Guarded by the version planned from: a write planned from an older status (a replica that was paused,
            # an index that lagged) is refused by the API server instead of overwriting a newer status.
            stored = await self.api.patch_task_status(namespace, name, patch,
                                                      task.get("metadata", {}).get("resourceVersion"))
        except StatusConflict:
            self._written.pop(key, None)  # plan from what the API server holds, not from our last write
            self._superseded.pop(key, None)
            raise
        metrics.record_status_change(namespace, name, task.get("status") or {}, new_status)
        self._remember_write(task, stored)
        return True

    def _remember_write(self, task: dict, stored: dict) -> None:
        """Plan from `stored` (our write) until the watch delivers it; the versions it replaced are superseded."""
        key = (task["metadata"]["namespace"], task["metadata"]["name"])
        superseded = self._superseded.setdefault(key, {})
        superseded[task.get("metadata", {}).get("resourceVersion")] = None
        if key in self._written:
            superseded[self._written[key].get("metadata", {}).get("resourceVersion")] = None
        superseded.pop(stored.get("metadata", {}).get("resourceVersion"), None)
        while len(superseded) > SUPERSEDED_KEEP:  # trimmed: a task written for days must not grow without bound
            del superseded[next(iter(superseded))]
        self._written[key] = stored

    async def confirm_current(self, task: dict) -> None:
        """Raise StatusConflict unless `task` is the version the API server holds. Creations planned without a status
        change carry no version guard of their own: planned from an older version (a lagging index, a replica taking
        over) they would recreate pods the task is already past. A status patch that changes nothing, guarded by the
        planned resourceVersion, lets the API server decide."""
        version = task.get("metadata", {}).get("resourceVersion")
        if not version:
            return
        namespace, name = task["metadata"]["namespace"], task["metadata"]["name"]
        try:
            stored = await self.api.patch_task_status(namespace, name, {}, version)
        except StatusConflict:
            self._written.pop((namespace, name), None)
            self._superseded.pop((namespace, name), None)
            raise
        if stored.get("metadata", {}).get("resourceVersion") != version:  # an API that counts even an empty patch
            self._remember_write(task, stored)


class _TaskSink:
    """`apply_plan`'s sink for one task: the Kubernetes API (creations and deletions overlap).

    Creations the API server refuses are collected in `refused` (for the next plan), not raised: the other steps of
    the plan still happen. A pod in the way that belongs to an older task of the same name (same deterministic pod
    name, another owner uid) is deleted instead of counted as created; the pod is created once it is gone."""

    def __init__(self, reconciler: Reconciler, task: dict, views: ClusterView | None = None):
        self.reconciler, self.task, self.views = reconciler, task, views
        self.namespace, self.name = task["metadata"]["namespace"], task["metadata"]["name"]
        self.refused: list[CreationRefusal] = []
        self.status_written = False

    # Each write batch starts with the fencing check (Reconciler.fence): a replica that lost the lease stops here.
    async def write_status(self, status: dict) -> bool:
        self.reconciler.fence()
        self.status_written = await self.reconciler.write_status(self.task, status)
        return self.status_written

    async def create_pods(self, manifests: list[dict]) -> int:
        self.reconciler.fence()
        if not self.status_written:
            await self.reconciler.confirm_current(self.task)
        problem = await self._store_credentials()
        if problem:  # the pods would not reach the store: refused like the API server's refusals (condition, event)
            logger.warning("%s/%s: no pods created: %s", self.namespace, self.name, problem)
            if manifests:  # one refusal carries the reason; none of the pods is created
                self.refused.append(CreationRefusal(pod=manifests[0]["metadata"]["name"], code=503, message=problem))
            return 0
        manifests, problem = await self._with_store_access(manifests)
        if problem:  # as above: the pods could not read or write their objects
            logger.warning("%s/%s: no pods created: %s", self.namespace, self.name, problem)
            self.refused.append(CreationRefusal(pod=manifests[0]["metadata"]["name"], code=503, message=problem))
            return 0
        self.reconciler.fence()  # again: the version check and the store keys awaited the API since the first check
        stale = self._stale_pods()
        return sum(await asyncio.gather(*(self._create(manifest, stale) for manifest in manifests)))

    async def _store_credentials(self) -> str | None:
        """The namespace's issued store keys, when this task's pods read them (no spec.storage.secretRef of its own):
        None when they are in place, else why not."""
        issuer = self.reconciler.store_credentials
        storage = (self.task.get("spec") or {}).get("storage") or {}
        if issuer is None or storage.get("secretRef"):
            return None
        return await issuer.ensure(self.namespace)

    async def _with_store_access(self, manifests: list[dict]) -> tuple[list[dict], str | None]:
        """With --presigned-urls, each pod with its own presigned URLs and no store keys (kube/presign.py), or the
        manifests as they are and why not; the manifests as they are for a task with its own secretRef."""
        config = self.reconciler.runtime_config
        if not config.presigned_urls or not manifests:
            return manifests, None
        from fedtask_operator.core.spec import parse_task
        from fedtask_operator.kube.presign import PresignError, manifest_location

        task = parse_task(self.task)
        if not uses_presigned_urls(task, config):
            return manifests, None

        def sign_all() -> list[dict]:
            presigner = self.reconciler.presigner()
            return [presigner.attach(pod, task, *manifest_location(task, config, pod)) for pod in manifests]

        try:
            return await asyncio.to_thread(sign_all), None
        except PresignError as error:
            return manifests, str(error)

    def _stale_pods(self) -> set[str]:
        """Pods in the index under this task's name whose owner is another incarnation of it."""
        if self.views is None:
            return set()
        return {pod["metadata"]["name"] for pod in self.views.task_pods.get((self.namespace, self.name), ())
                if not owned_by(pod, self.task)}

    async def _create(self, manifest: dict, stale: set[str]) -> int:
        pod = manifest["metadata"]["name"]
        api = self.reconciler.api
        if pod in stale:
            await api.delete_pod(self.namespace, pod, guard=self.reconciler.fence)
            logger.info("deleted pod %s/%s of an older task named %s before creating it again", self.namespace, pod,
                        self.name)
            return 0
        metadata = dict(manifest.get("metadata") or {})
        manifest = {**manifest, "metadata": metadata}

        def fence_and_stamp() -> None:  # on the worker thread, right before the send: the term held then
            self.reconciler.fence()
            term = self.reconciler.leader_annotations()
            if term:
                metadata["annotations"] = {**(metadata.get("annotations") or {}), **term}
                metadata["labels"] = {**(metadata.get("labels") or {}), LEADER_FENCED: "true"}
        try:
            return int(await api.create_pod(self.namespace, manifest, guard=fence_and_stamp))
        except PodCreationRefused as refusal:
            if _fence_denial(refusal):
                raise NotLeader(f"the API server's leader fence refused pod {pod}: {refusal.message}") from refusal
            logger.warning("pod %s/%s refused: %s", self.namespace, pod, refusal)
            self.refused.append(CreationRefusal(pod=pod, code=refusal.code, message=refusal.message))
            return 0

    async def delete_pods(self, names: list[str]) -> int:
        self.reconciler.fence()
        api = self.reconciler.api
        return sum(await asyncio.gather(*(api.delete_pod(self.namespace, name, guard=self.reconciler.fence)
                                          for name in names)))

    async def post_events(self, events: list[Event]) -> None:
        self.reconciler.fence()
        for event in events:
            self.reconciler.post_event(self.task, event.type, event.reason, event.message)

    async def delete_task(self) -> None:
        self.reconciler.fence()
        await self.reconciler.api.delete_task(self.namespace, self.name)


# The store cleanup of a deleted task (handler cleanup_store, only with --cleanup-store): bounded at every level, on
# its own threads, so an unreachable store holds up neither the API calls of other tasks nor the operator for long.
STORE_CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the store
STORE_READ_TIMEOUT = 30.0  # seconds without a byte from the store
STORE_CLEANUP_DEADLINE = 120.0  # seconds for one whole cleanup (listing and deleting), then it counts as failed
_store_executor = None


class StoreCleanupSkipped(Exception):
    """This task's objects are not the operator's to delete (they live at an endpoint the task chose)."""


def delete_store_objects(task_body: dict, runtime_config: RuntimeConfig, access_key: str, secret_key: str,
                         deadline: float | None = None) -> int:
    """Delete every object of one task incarnation (B = <storeBase>/<namespace>/<task>/<uid>); returns the count.

    Only with `--cleanup-store`: the operator then needs the store credentials itself (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY in its environment). Only at the operator's own endpoint (--store-endpoint): the
    operator's keys never go to an endpoint a task chose (StoreCleanupSkipped). Connections time out after
    STORE_CONNECT_TIMEOUT/STORE_READ_TIMEOUT seconds, and the whole cleanup raises TimeoutError past `deadline`
    (a time.monotonic() value)."""
    import minio
    import urllib3
    from minio.deleteobjects import DeleteObject

    from fedtask_operator.core.naming import split_s3_uri, store_base
    from fedtask_operator.core.spec import parse_task

    task = parse_task(task_body)
    base = store_base(task, runtime_config)
    if not base.startswith("s3://"):
        return 0
    chosen = task.spec.storage.endpoint
    if chosen and chosen != runtime_config.s3_endpoint:
        raise StoreCleanupSkipped(
            f"the objects under {base} are at spec.storage.endpoint {chosen}, not at the operator's store "
            f"{runtime_config.s3_endpoint or '(none)'}: the operator deletes only in its own store; delete them there")
    if not runtime_config.s3_endpoint:
        raise StoreCleanupSkipped(f"the operator has no --store-endpoint: the objects under {base} stay")

    def check_deadline() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"store cleanup of {base} at {runtime_config.s3_endpoint} ran out of time "
                               f"({STORE_CLEANUP_DEADLINE:.0f}s)")

    bucket, prefix = split_s3_uri(base)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=STORE_CONNECT_TIMEOUT, read=STORE_READ_TIMEOUT),
        retries=urllib3.Retry(total=2, connect=2, read=1, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504)))
    client = minio.Minio(runtime_config.s3_endpoint, access_key=access_key, secret_key=secret_key,
                         secure=runtime_config.s3_secure, region=runtime_config.s3_region or None, http_client=http)
    names = []
    for obj in client.list_objects(bucket, prefix=prefix + "/", recursive=True):
        check_deadline()
        names.append(obj.object_name)
    check_deadline()
    errors = list(client.remove_objects(bucket, [DeleteObject(name) for name in names]))
    if errors:
        raise RuntimeError(f"store cleanup of {base}: {len(errors)} objects not deleted, first: {errors[0]}")
    return len(names)


async def cleanup_store_objects(task_body: dict, runtime_config: RuntimeConfig, access_key: str, secret_key: str,
                                seconds: float | None = None) -> int:
    """`delete_store_objects` on the store cleanup's own threads (not the default pool every API call uses), given
    up after `seconds` (default STORE_CLEANUP_DEADLINE; TimeoutError; a thread still blocked in a socket ends by
    its read timeout)."""
    global _store_executor
    from concurrent.futures import ThreadPoolExecutor

    seconds = STORE_CLEANUP_DEADLINE if seconds is None else seconds
    if _store_executor is None:
        _store_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedtask-store-cleanup")
    deadline = time.monotonic() + seconds
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_store_executor, delete_store_objects, task_body, runtime_config, access_key,
                                  secret_key, deadline)
    try:
        return await asyncio.wait_for(future, timeout=seconds + 1.0)
    except TimeoutError:
        raise TimeoutError(f"store cleanup at {runtime_config.s3_endpoint} did not finish within {seconds:.0f}s") \
            from None
