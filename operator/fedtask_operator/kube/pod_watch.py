"""The operator's own watch of pods: fedtask's pods in full, every other pod as a `pod_index.PodSummary`, nothing more.

kopf watched pods before (two indexes and an event handler). For every pod in the cluster it kept per-object state
(a memory record with a memo copy, the index values, a worker stream per object while events flowed) and listed
them in one unpaginated response, whose parsed bodies the process heap kept after they were freed: the operator's
RSS grew by ~34 KB per foreign pod (issue 13; `benchmarks/scale.py --compare-tree` measures it against the tree
before this watch). Here:

- the list is paged (`PAGE_SIZE` pods per response, one page of full pods in memory at a time), then a watch from
  the list's resourceVersion with bookmarks; a watch that ends (the server's timeout) resumes from the last seen
  version; 410 Gone (the version is too old) lists again, and the index is replaced by what that list holds;
- a pod labelled `fedtask.io/task` and controlled by a task keeps its body (`task_pods`: (namespace, task) -> pods,
  what the planner reads); every pod that holds resources keeps its summary (`summaries`, resource accounting);
  nothing else of any pod is kept;
- a change of one of fedtask's pods wakes its task (`on_task_pod(type, namespace, task, body)`), as kopf's pod
  event handler did; the indexes change on the event loop only, so a reconcile never sees them half-updated;
- the watch is always cluster-wide. An operator watching some namespaces (`--namespace`) keeps bodies of, and wakes
  tasks for, the pods of those namespaces only, but the summaries of every pod: resource accounting needs the
  requests of every pod on a node, whatever its namespace (the RBAC grants list and watch of pods cluster-wide in
  every variant, deploy/rbac/rules.yaml). Before, a namespaced operator listed every pod of the cluster on each
  scheduling pass instead (tens of seconds per pass at 100,000 pods); now it pays ~250 B per pod, as cluster-wide.

The HTTP calls block (the kubernetes client), so the watch runs in a daemon thread and hands parsed pods to the event
loop. `wait_ready()` returns once the first list is in: task handlers wait for it, as kopf's handlers wait for kopf's
indexes.
"""
from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fedtask_operator.core.naming import TASK_LABEL
from fedtask_operator.kube import pod_index
from fedtask_operator.kube.reconciler import owning_task

logger = logging.getLogger("fedtask.operator.pods")
PAGE_SIZE = 500
RETRY_SECONDS = (1.0, 30.0)  # after an error the delay doubles from the first to at most the second
PAGE_RETRIES = 5  # a list page that fails (cut off, timed out, 5xx) is asked again this often, then the list restarts

Key = tuple[str, str]  # (namespace, name)
TaskKey = tuple[str, str]  # (namespace, task)


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class TaskPods(Mapping):
    """(namespace, task) -> the task's pod bodies (a tuple), as the kopf index `task_pods` gave them."""

    def __init__(self, by_task: dict[TaskKey, dict[Key, dict]]):
        self._by_task = by_task

    def __getitem__(self, key: TaskKey) -> tuple[dict, ...]:
        return tuple(self._by_task[key].values())

    def __iter__(self) -> Iterator[TaskKey]:
        return iter(self._by_task)

    def __len__(self) -> int:
        return len(self._by_task)


def _entry(pod: dict) -> tuple[Key, pod_index.PodSummary | None, TaskKey | None, dict | None]:
    """What the index keeps of one pod: its key, its summary (or None), and for fedtask's pods the task and body."""
    metadata = pod.get("metadata") or {}
    namespace = metadata.get("namespace") or ""
    summary = pod_index.summarize(pod)
    task = owning_task(pod) if TASK_LABEL in (metadata.get("labels") or {}) else None
    key = (summary.namespace, summary.name) if summary is not None else (namespace, metadata.get("name") or "")
    if task:
        return key, summary, (namespace, task), pod
    return key, summary, None, None


class PodWatch:
    """List and watch every pod into the two indexes: summaries of all, bodies of fedtask's pods in `namespaces`
    (names or kopf-style globs; none: every namespace)."""

    def __init__(self, api_client, namespaces: tuple[str, ...] = (), on_task_pod: Callable | None = None,
                 server_timeout: int = 300, request_timeout: float = 30.0, page_size: int = PAGE_SIZE):
        import kubernetes

        # its own connection pool: a watch holds a connection for minutes, the reconciler's calls need theirs
        self._core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(api_client.configuration))
        self._exception = kubernetes.client.ApiException
        self.on_task_pod = on_task_pod
        self.server_timeout = server_timeout
        self.request_timeout = request_timeout
        self.page_size = page_size
        # one scope, the cluster: every pod's summary (resource accounting), bodies only in `namespaces`
        self._scopes: list[str | None] = [None]
        self._filter = tuple(namespaces)
        self.summaries: dict[Key, pod_index.PodSummary] = {}
        self._by_task: dict[TaskKey, dict[Key, dict]] = {}
        self._task_of: dict[Key, TaskKey] = {}
        self.task_pods = TaskPods(self._by_task)
        self._listed: set[str | None] = set()
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handler_context: contextvars.Context | None = None  # see handlers_ready
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[str | None, Any] = {}  # the open watch response of each scope
        self._pending: set[asyncio.Future] = set()
        self.lists = 0  # lists done (the first per scope, and one per 410 Gone): for tests and logs

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> PodWatch:
        self._loop = asyncio.get_running_loop()
        for scope in self._scopes:
            thread = threading.Thread(target=self._run, args=(scope,), daemon=True,
                                      name=f"fedtask-pod-watch-{scope or 'all'}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, join_seconds: float = 0.0) -> None:
        """End the watches: a blocked watch read is shut down, and each thread ends within its current request (a
        list page); with `join_seconds`, wait that long for them."""
        self._stop.set()
        for response in list(self._responses.values()):
            try:
                response.shutdown()  # wakes the thread's blocked read
            except Exception as error:  # already closed
                logger.debug("shutting a pod watch down: %s", error)
        deadline = time.monotonic() + join_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handlers_ready(self, context: contextvars.Context) -> None:
        """Pod events wake tasks from now on, their reconciles running in `context`: a kopf handler's (kopf.event
        reads its context variables). Until then (kopf has not listed tasks and nodes yet) they wake nobody: kopf's
        resume handlers reconcile every task once it has."""
        if self.handler_context is None:
            self.handler_context = context

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def pods(self):
        """Every summarized pod (resource accounting), live: `pod_index.PodsView` expands them when iterated."""
        return pod_index.PodsView(self.summaries.values())

    # -------------------------------------------------------------------------------- the index (event loop only)
    def _wanted(self, namespace: str) -> bool:
        """Whether the operator handles tasks in `namespace` (their pods' bodies kept, changes wake them)."""
        return not self._filter or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self._filter)

    def _scoped(self, entry):
        """The entry as kept: a pod outside the watched namespaces is only its summary (it wakes no task)."""
        key, summary, task, _ = entry
        return entry if task is None or self._wanted(key[0]) else (key, summary, None, None)

    def _put(self, key: Key, summary, task: TaskKey | None, body: dict | None) -> TaskKey | None:
        """Store one pod's entry; returns the task whose pods changed (the new or the former owner)."""
        if summary is None:
            self.summaries.pop(key, None)
        else:
            self.summaries[key] = summary
        former = self._task_of.get(key)
        if former is not None and former != task:
            self._drop_body(key, former)
        if task is not None:
            self._by_task.setdefault(task, {})[key] = body  # type: ignore[assignment]
            self._task_of[key] = task
        return task or former

    def _drop(self, key: Key) -> TaskKey | None:
        self.summaries.pop(key, None)
        task = self._task_of.get(key)
        if task is not None:
            self._drop_body(key, task)
        return task

    def _drop_body(self, key: Key, task: TaskKey) -> None:
        self._task_of.pop(key, None)
        pods = self._by_task.get(task)
        if pods is not None:
            pods.pop(key, None)
            if not pods:
                del self._by_task[task]

    def _event(self, type_: str, entry) -> None:
        key, summary, task, body = self._scoped(entry)
        if type_ == "DELETED":
            woken = self._drop(key)
        else:
            woken = self._put(key, summary, task, body)
        if woken is not None and body is None and type_ != "DELETED":
            body = {}  # the pod stopped being one of the task's (label removed): its task looks again
        if woken is not None:
            self._wake(type_, woken, body or {})

    def _replace(self, scope: str | None, entries: list) -> None:
        """A (re)list of `scope` is complete: the index holds exactly what it listed; tasks whose pods differ wake."""
        wanted = [self._scoped(entry) for entry in entries]
        listed = {entry[0] for entry in wanted}
        before = {key: (body.get("metadata") or {}).get("resourceVersion")
                  for pods in self._by_task.values() for key, body in pods.items()
                  if scope is None or key[0] == scope}
        gone = [key for key in list(self.summaries) + list(self._task_of)
                if (scope is None or key[0] == scope) and key not in listed]
        changed: dict[TaskKey, tuple[str, dict]] = {}
        for key in gone:
            task = self._drop(key)
            if task is not None:
                changed[task] = ("DELETED", {})
        for key, summary, task, body in wanted:
            former = self._task_of.get(key)
            self._put(key, summary, task, body)
            version = (body or {}).get("metadata", {}).get("resourceVersion") if body else None
            if task is not None and before.get(key) != version:
                changed[task] = ("MODIFIED", body)  # type: ignore[assignment]
            if former is not None and former != task:
                changed[former] = ("MODIFIED", {})
        first = scope not in self._listed
        self._listed.add(scope)
        self.lists += 1
        logger.info("pods listed%s: %d (%d summarized, %d tasks with pods)", f" in {scope}" if scope else "",
                    len(wanted), len(self.summaries), len(self._by_task))
        if len(self._listed) == len(self._scopes):
            self._ready.set()
        if not first:  # the first list wakes nobody: the task handlers run once the index is ready
            for task, (type_, body) in changed.items():
                self._wake(type_, task, body)

    def _wake(self, type_: str, task: TaskKey, body: dict) -> None:
        if self.on_task_pod is None or not self._ready.is_set() or self.handler_context is None:
            return
        assert self._loop is not None
        future = self._loop.create_task(self.on_task_pod(type_, task[0], task[1], body), context=self.handler_context)
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("reconcile after a pod event failed", exc_info=future.exception())

    # ------------------------------------------------------------------------------ the HTTP side (one thread)
    def _post(self, callback, *args) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self, scope: str | None) -> None:
        delay = RETRY_SECONDS[0]
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(scope)
                version = self._watch(scope, version)
                delay = RETRY_SECONDS[0]
            except Gone:
                logger.info("pod watch%s: resourceVersion %s is gone, listing again",
                            f" in {scope}" if scope else "", version)
                version = None
            except Exception as error:  # the API server restarts, the network drops: resume after a delay
                logger.warning("pod watch%s failed (%s: %s); again in %.0fs", f" in {scope}" if scope else "",
                               type(error).__name__, error, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_SECONDS[1])

    def _call(self, scope: str | None, **kwargs):
        kwargs.update(_preload_content=False)
        if scope is None:
            return self._core.list_pod_for_all_namespaces(**kwargs)
        return self._core.list_namespaced_pod(scope, **kwargs)

    def _list(self, scope: str | None) -> str:
        """List `scope` page by page (each page parsed, reduced to entries and dropped); returns the version.

        A page that fails (a response cut off, a read timeout, a 5xx or 429) is asked for again with the same continue
        token, up to PAGE_RETRIES times with a growing delay: under load, restarting a list of 80,000 pods from its
        first page on every such error may never finish (benchmarks/scale.py --real saw one cut off after 3 minutes).
        """
        entries: list = []
        token = None
        failures = 0
        while True:
            try:
                response = self._call(scope, limit=self.page_size, _continue=token,
                                      _request_timeout=self.request_timeout)
                page = json.loads(response.data or b"{}")
            except Exception as error:
                status = getattr(error, "status", None) if isinstance(error, self._exception) else None
                if status == 410 and token:  # the continue token expired mid-list: start over
                    entries, token = [], None
                    continue
                if (status is not None and status < 500 and status != 429) or failures >= PAGE_RETRIES \
                        or self._stop.is_set():
                    raise
                failures += 1
                delay = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                logger.warning("pod list%s: a page failed (%s: %s); the same page again in %.0fs (%d of %d)",
                               f" in {scope}" if scope else "", type(error).__name__, error, delay, failures,
                               PAGE_RETRIES)
                self._stop.wait(delay)
                continue
            failures = 0
            entries.extend(_entry(pod) for pod in page.get("items") or ())
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            del page
            if not token:
                self._post(self._replace, scope, entries)
                return str(metadata.get("resourceVersion") or "")

    def _watch(self, scope: str | None, version: str) -> str:
        """Watch from `version` until the server ends the stream; returns the last version seen."""
        from kubernetes.watch.watch import iter_resp_lines

        kwargs: dict[str, Any] = dict(watch=True, allow_watch_bookmarks=True, timeout_seconds=self.server_timeout,
                                      _request_timeout=(10, self.server_timeout + 60))
        if version:
            kwargs["resource_version"] = version
        try:
            response = self._call(scope, **kwargs)
        except self._exception as error:
            if error.status == 410:
                raise Gone(error.reason) from error
            raise
        self._responses[scope] = response
        try:
            if self._stop.is_set():
                return version
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                type_, pod = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if pod.get("code") == 410:
                        raise Gone(pod.get("message"))
                    raise RuntimeError(f"watch error: {pod.get('message') or pod}")
                version = (pod.get("metadata") or {}).get("resourceVersion") or version
                if type_ in ("ADDED", "MODIFIED", "DELETED"):
                    self._post(self._event, type_, _entry(pod))
        finally:
            self._responses.pop(scope, None)
            response.release_conn()
        return version
