"""kopf handlers: thin wrappers that hand every change to `reconciler.Reconciler` (the logic is in reconciler.py).

Watched by kopf: FederatedTasks (create/update/resume, a resync timer, deletions for metrics) and nodes (a new or
changed node wakes tasks that wait for devices). Pods are watched by kube/pod_watch.py, not kopf: it keeps fedtask's
pods in full and any other pod as a small summary, and a task's pod change triggers its reconcile at once (the
reaction path from "train pod succeeded" to "aggregate pod created"). Indexes keep pods, nodes and tasks in memory,
so no handler lists anything. Label filters run here, not in the API server (which may ignore selectors).
"""
from __future__ import annotations

import asyncio
import contextvars
import copy
import os
import time
from collections import Counter

import kopf

from fedtask_operator.core.naming import pinned_node
from fedtask_operator.core.phases import PENDING, POD_FINISHED_PHASES, SCHEDULING
from fedtask_operator.core.spec import GROUP, PLURAL, VERSION
from fedtask_operator.kube import credentials, lease, metrics, pod_watch
from fedtask_operator.kube import reconciler as k8s

TASKS = (GROUP, VERSION, PLURAL)
_registered = False


def _plain(body) -> dict:
    return copy.deepcopy(dict(body))


def _views(memo, kwargs) -> k8s.ClusterView:
    return k8s.ClusterView(task_pods=memo.pods.task_pods, nodes=_values(kwargs["node_objects"]),
                           pods=memo.pods.pods, tasks=kwargs["task_objects"])


def _values(index) -> list[dict]:
    return [value for store in index.values() for value in store]


# ------------------------------------------------------------------------------------------------------- indexes
def node_objects(body, **_):
    return {None: _plain(body)}


def task_objects(body, namespace, name, **_):
    return {(namespace, name): _plain(body)}


# ------------------------------------------------------------------------------------------------------ handlers
async def startup(memo, settings, **kwargs):
    api = k8s.KubeApi(request_timeout=memo.config.request_timeout)
    memo.reconciler = k8s.Reconciler(
        api=api,
        runtime_config=k8s.build_runtime_config(memo.config),
        clusterwide=memo.config.clusterwide,
        post_event=lambda body, type_, reason, message: kopf.event(body, type=type_, reason=reason,
                                                                   message=message),
        scheduling=memo.config.scheduling)
    if memo.config.namespace_credentials:  # per-namespace store keys before each namespace's first pod
        root = credentials.StoreAdmin(memo.config.store_endpoint, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                                      os.environ.get("AWS_SECRET_ACCESS_KEY", ""), memo.config.store_secure,
                                      memo.config.store_region, memo.config.store_bucket, memo.config.store_prefix,
                                      readable=memo.config.store_uri_allow)
        memo.reconciler.store_credentials = credentials.NamespaceCredentials(
            api.api_client, root, request_timeout=memo.config.request_timeout)
    # kopf's indexes (live, filled once kopf has listed): a pod event's reconcile reads them too
    memo.node_index, memo.task_index = kwargs["node_objects"], kwargs["task_objects"]
    memo.pods = pod_watch.PodWatch(api.api_client, memo.config.namespaces, on_task_pod=_pod_changed(memo),
                                   server_timeout=memo.config.watch_server_timeout,
                                   request_timeout=memo.config.request_timeout).start()
    memo.lease_loop = None
    if memo.config.leader_election:  # only the Lease holder acts (kube/lease.py); the loop runs until cleanup
        config = lease.LeaseConfig.from_duration(memo.config.lease_name, memo.config.lease_namespace,
                                                 memo.config.lease_duration)
        leader = lease.LeaderLease(lease.LeaseApi(api.api_client, request_timeout=config.renew_deadline / 2),
                                   config, on_acquired=memo.reconciler.leadership_acquired)
        memo.reconciler.leader = leader
        memo.lease_loop = asyncio.create_task(leader.run())


async def cleanup(memo, **_):
    """The operator stops: give the Lease up at once, so another replica need not wait a lease duration."""
    pods = getattr(memo, "pods", None)
    if pods is not None:  # its threads end (a blocked watch read is shut down) before the process does
        await asyncio.to_thread(pods.stop, 5.0)
    loop = getattr(memo, "lease_loop", None)
    if loop is None:
        return
    loop.cancel()
    try:
        await memo.reconciler.leader.release()
    except Exception as error:  # the others take over after the lease duration anyway
        k8s.logger.warning("releasing the leader lease failed: %s", error)


async def task_changed(namespace, name, memo, **kwargs):
    memo.pods.handlers_ready(contextvars.copy_context())  # kopf runs these once its indexes are filled
    await memo.pods.wait_ready()
    await memo.reconciler.request(namespace, name, _views(memo, kwargs))


TASK_COUNT_SECONDS = 5.0  # the per-phase task counts (a gauge) are recounted at most this often
_counted_at = -TASK_COUNT_SECONDS


async def task_resync(namespace, name, memo, **kwargs):
    global _counted_at
    memo.pods.handlers_ready(contextvars.copy_context())  # kopf runs these once its indexes are filled
    await memo.pods.wait_ready()
    await memo.reconciler.request(namespace, name, _views(memo, kwargs))
    # Every task has this timer: counting every task on each would cost O(tasks^2) per interval.
    now = time.monotonic()
    if now - _counted_at >= TASK_COUNT_SECONDS:
        _counted_at = now
        counts = Counter((ns, (body.get("status") or {}).get("phase") or PENDING)
                         for (ns, _), bodies in kwargs["task_objects"].items() for body in bodies)
        metrics.set_task_counts(dict(counts))


async def task_event(type, namespace, name, memo, **_):
    if type == "DELETED":
        memo.reconciler.forget(namespace, name)
        metrics.forget_task(namespace, name)


def _pod_changed(memo):
    """What a change of one of a task's pods does (kube/pod_watch.py calls it): reconcile the task."""
    async def pod_changed(type_: str, namespace: str, task: str, body: dict) -> None:
        if type_ == "DELETED" and (body.get("status") or {}).get("phase") in POD_FINISHED_PHASES:
            return  # a finished pod goes only once its result is in the status (the resync timer covers the rest)
        k8s.logger.debug("pod %s of %s/%s: %s", (body.get("metadata") or {}).get("name"), namespace, task, type_)
        views = k8s.ClusterView(task_pods=memo.pods.task_pods, nodes=_values(memo.node_index),
                                pods=memo.pods.pods, tasks=memo.task_index)
        await memo.reconciler.request(namespace, task, views)
    return pod_changed


async def node_changed(memo, body=None, **kwargs):
    """A node appeared, changed or went away: tasks waiting for devices may fit now, and tasks with a pod on it
    learn that it turned NotReady or was deleted (the planner replaces such pods after a grace period)."""
    memo.pods.handlers_ready(contextvars.copy_context())  # kopf runs these once its indexes are filled
    await memo.pods.wait_ready()
    views = _views(memo, kwargs)
    node_name = ((body or {}).get("metadata") or {}).get("name")
    for namespace, name in tasks_to_wake_for_node(views, node_name):
        await memo.reconciler.request(namespace, name, views)


def tasks_to_wake_for_node(views: k8s.ClusterView, node_name: str | None) -> list[tuple[str, str]]:
    """The tasks a change of node `node_name` concerns: those waiting for devices, and those with a pod bound or
    pinned to it."""
    wake = []
    for (namespace, name), bodies in list(views.tasks.items()):
        waiting = any((body.get("status") or {}).get("stage") == SCHEDULING for body in bodies)
        on_node = bool(node_name) and any(pinned_node(pod) == node_name
                                          for pod in views.task_pods.get((namespace, name), ()))
        if waiting or on_node:
            wake.append((namespace, name))
    return wake


CLEANUP_RETRIES = 8  # attempts of one task's store cleanup; then kopf gives up and lets the deletion finish
CLEANUP_BACKOFF_SECONDS = (10.0, 300.0)  # the delay doubles from the first to at most the second


async def cleanup_store(body, memo, logger, retry=0, **_):
    """The task is being deleted: remove its objects from the store (the finalizer holds the deletion until then).

    Bounded (reconciler.cleanup_store_objects: timeouts, a deadline, its own threads) and only at the operator's
    own store. A failure is a Warning event and a kopf retry with a doubling delay; after CLEANUP_RETRIES attempts
    kopf gives up and the deletion goes on (the event says which objects stay)."""
    task = _plain(body)
    if not memo.reconciler.may_act():  # the leader cleans up; this replica retries in case it becomes the leader
        raise kopf.TemporaryError("not the leader: the leader cleans the store up", delay=10)
    try:
        count = await k8s.cleanup_store_objects(task, memo.reconciler.runtime_config,
                                                os.environ.get("AWS_ACCESS_KEY_ID", ""),
                                                os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    except k8s.StoreCleanupSkipped as skipped:
        memo.reconciler.post_event(task, "Warning", "StoreCleanupSkipped", str(skipped))
        return
    except Exception as error:
        low, high = CLEANUP_BACKOFF_SECONDS
        delay = min(low * 2 ** retry, high)
        last = retry + 1 >= CLEANUP_RETRIES
        message = (f"store cleanup failed (attempt {retry + 1} of {CLEANUP_RETRIES}"
                   + ("; giving up, the objects stay" if last else f"; retrying in {delay:.0f}s") + f"): {error}")
        memo.reconciler.post_event(task, "Warning", "StoreCleanupFailed", message)
        raise kopf.TemporaryError(message, delay=delay) from error
    logger.info(f"deleted {count} store objects")


def register(config) -> None:
    """Register the handlers with kopf's default registry (intervals come from the configuration)."""
    global _registered
    if _registered:
        return
    _registered = True
    kopf.on.startup()(startup)
    kopf.on.cleanup()(cleanup)
    kopf.index("nodes")(node_objects)
    kopf.index(*TASKS)(task_objects)
    kopf.on.create(*TASKS)(task_changed)
    kopf.on.update(*TASKS)(task_changed)
    kopf.on.resume(*TASKS)(task_changed)
    kopf.timer(*TASKS, interval=config.resync_seconds, sharp=False)(task_resync)
    kopf.on.event(*TASKS)(task_event)
    kopf.on.event("nodes")(node_changed)
    if config.cleanup_store:  # the only reason for a finalizer: without it, deletion never waits for the operator
        kopf.on.delete(*TASKS, retries=CLEANUP_RETRIES)(cleanup_store)
