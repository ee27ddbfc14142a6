"""`NodeAgent`: one Node of a real API server, its pods run by a `ProcessKubelet`.

- Registers the Node (labels, annotations, taints from the node file; capacity/allocatable incl. extended resources
  such as `nvidia.com/gpu`), posts the NodeReady heartbeat (`nodes/status`, every `status_seconds`) and renews the
  node's Lease in kube-node-lease (every `renew_seconds`), so the node lifecycle controller keeps it Ready.
- Watches the pods bound to the node (`spec.nodeName`), starts each (see `podspec.prepare`), reports its status
  through `pods/status` (phase, conditions, containerStatuses: state, exit code, reason, termination message,
  restarts), runs readiness/liveness probes and restarts containers by `restartPolicy` (back-off 10 s doubling to
  5 min, as a kubelet).
- A pod being deleted gets SIGTERM, SIGKILL after its grace period, its final status, and then the delete with
  gracePeriodSeconds=0 that removes it from the API (the kubelet's half of a graceful deletion).

One thread runs everything that touches pods (this class's `step`); watches, the heartbeat and the prober are
threads that only queue what they saw and wake it through the process kubelet's notification socket.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedtask_operator.agent.node_api import ApiError, NodeApi
from fedtask_operator.agent.podspec import PodPreparer, PrepareError
from fedtask_operator.agent.probes import ProbeState, new_probes, run_probe
from fedtask_operator.agent.status import (
    ContainerRecord,
    build_node,
    build_node_status,
    build_pod_status,
    container_state,
)
from fedtask_operator.core.phases import POD_FAILED, POD_FINISHED_PHASES, POD_RUNNING
from fedtask_operator.local.files import utc_timestamp
from fedtask_operator.local.kubelet import NOTIFY_SOCKET_NAME, ProcessKubelet, pod_key

log = logging.getLogger("fedtask.agent")

TERMINAL = POD_FINISHED_PHASES
MAX_BACKOFF_SECONDS = 300.0
RETRY_START_SECONDS = 5.0  # a pod waiting for a Secret, a claim or a token is tried again this often
FIRST_RETRY_SECONDS = 0.05  # after an API error preparing a pod; doubling up to RETRY_START_SECONDS
WATCH_SECONDS = 290


@dataclass
class Entry:
    pod: dict  # the latest version from the API
    record: ContainerRecord
    local: dict | None = None  # the manifest the process kubelet runs (None: not started)
    local_status: dict | None = None
    retry_at: float = 0.0  # when to start (or restart) next
    restarting: bool = False  # the container ended and restartPolicy starts it again at retry_at
    done: bool = False  # ended for good
    terminating_until: float | None = None  # being deleted: SIGKILL at this time
    probes: dict[str, ProbeState] = field(default_factory=dict)
    written: str = ""  # the status last written to the API
    attempts: int = 0  # API errors while preparing the pod

    @property
    def key(self) -> str:
        return pod_key(self.pod)

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]


class NodeAgent:
    def __init__(self, api: NodeApi, template: dict, root: str | os.PathLike, preparer: PodPreparer, *,
                 pod_env: dict, launcher=None, lease_seconds: int = 40, renew_seconds: float = 10.0,
                 status_seconds: float = 60.0, crash_backoff_seconds: float = 10.0, tick: float = 0.2,
                 version: str = "fedtask-node-agent", node_ip: str = "127.0.0.1"):
        self.api = api
        self.template = template
        self.name = template["metadata"]["name"]
        self.root = Path(root)
        self.preparer = preparer
        self.kubelet = ProcessKubelet(self.root / "pods", secrets=preparer.secrets, config_maps=preparer.config_maps,
                                      launcher=launcher, base_env=pod_env, claims_root=self.root / "claims")
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.status_seconds = status_seconds
        self.crash_backoff = crash_backoff_seconds
        self.tick = tick
        self.version = version
        self.node_ip = node_ip  # also every pod's IP: they share the machine's network (like hostNetwork pods)
        self.node: dict = {}
        self.entries: dict[str, Entry] = {}
        self.events: queue.Queue = queue.Queue()
        self.probe_changes: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()  # events to post
        self.stopping = threading.Event()
        self.ready_since = utc_timestamp()
        self._threads: list[threading.Thread] = []

    # -------------------------------------------------------------------------------------------------- lifecycle
    def register(self) -> dict:
        """Create the Node (or take over the existing one), post its status and its first Lease."""
        desired = build_node(self.template)
        node = self.api.get_node(self.name)
        if node is None:
            node = self.api.create_node(desired)
            log.info("registered node %s", self.name)
        else:
            node = self.api.patch_node(self.name, {"metadata": {"labels": desired["metadata"]["labels"]}})
            log.info("node %s exists: labels reconciled", self.name)
        self.node = node
        self.post_node_status()
        self.api.renew_lease(self.node, self.lease_seconds)
        return node

    def post_node_status(self) -> None:
        self.api.patch_node_status(self.name, build_node_status(self.template, utc_timestamp(), self.ready_since,
                                                                self.version, self.node_ip))

    def start_threads(self) -> None:
        for target, name in ((self._heartbeat, "heartbeat"), (self._watch_pods, "pod-watch"),
                             (self._prober, "prober"), (self._post_events, "events")):
            thread = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def run(self) -> None:
        self.register()
        self.start_threads()
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception:  # one pod's trouble (an API error, a refused status) must not take the node down
                log.exception("node %s: sync failed; trying again", self.name)
                self.stopping.wait(1.0)
            self.kubelet.wait_for_change(self.tick)

    def stop(self) -> None:
        self.stopping.set()
        self.wake()

    def wake(self) -> None:
        """Interrupt the main loop's wait (it sleeps on the process kubelet's notification socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notifier:
            notifier.setblocking(False)
            try:
                notifier.sendto(b"w", str(self.kubelet.root / NOTIFY_SOCKET_NAME))
            except OSError:
                pass

    # ------------------------------------------------------------------------------------------------ main thread
    def step(self) -> None:
        self._drain_events()
        now = time.monotonic()
        for entry in list(self.entries.values()):
            if entry.terminating_until is not None:
                self._terminate(entry, now)
            elif entry.done:
                continue
            elif entry.local is None and now >= entry.retry_at:
                self._start(entry)
            elif entry.restarting and now >= entry.retry_at:
                self._restart(entry)
        for pod, status in self.kubelet.poll():
            entry = self.entries.get(pod_key(pod))
            if entry is not None and entry.uid == pod["metadata"].get("uid"):
                self._observe(entry, status)
        self._apply_probe_changes()
        for entry in list(self.entries.values()):
            if entry.terminating_until is None:
                self._report(entry)

    def _drain_events(self) -> None:
        while True:
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "SYNC":
                    listed = {pod_key(pod): pod for pod in payload}
                    for key, entry in list(self.entries.items()):
                        if key not in listed or listed[key]["metadata"]["uid"] != entry.uid:
                            self._forget(entry)
                    for pod in payload:
                        self._on_pod(pod)
                elif kind == "DELETED":
                    entry = self.entries.get(pod_key(payload))
                    if entry is not None and entry.uid == payload["metadata"]["uid"]:
                        self._forget(entry)
                else:
                    self._on_pod(payload)
            except ApiError as err:
                log.warning("pod event %s: %s", kind, err)

    def _on_pod(self, pod: dict) -> None:
        key = pod_key(pod)
        entry = self.entries.get(key)
        if entry is not None and entry.uid != pod["metadata"]["uid"]:
            self._forget(entry)  # a new pod under the same name
            entry = None
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        if entry is None:
            if deleting:  # never ran here (or ran under an earlier agent): nothing to stop
                self._finish_deletion(pod)
                return
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                return  # finished before this agent started; it stays as it is until someone deletes it
            self.entries[key] = Entry(pod=pod, record=ContainerRecord(acknowledged=utc_timestamp()))
            return
        entry.pod = pod
        if deleting and entry.terminating_until is None:
            self._begin_termination(entry)

    def _start(self, entry: Entry) -> None:
        try:
            local = self.preparer.prepare(entry.pod)
        except PrepareError as err:
            if entry.record.waiting != (err.reason, err.message):
                self._event(entry, "Warning", "Failed", f"Error: {err.message}")
            entry.record.waiting = (err.reason, err.message)
            entry.retry_at = time.monotonic() + RETRY_START_SECONDS
            return
        except ApiError as err:
            # E.g. 403 from the Node authorizer, whose graph learns of the pod's Secrets a moment after the pod is
            # bound: retry soon, then less often.
            delay = min(FIRST_RETRY_SECONDS * 2 ** entry.attempts, RETRY_START_SECONDS)
            entry.attempts += 1
            log.info("%s: cannot prepare the pod yet (retry in %.1fs): %s", entry.key, delay, err)
            entry.retry_at = time.monotonic() + delay
            return
        entry.record.waiting = None
        entry.local = local
        self._run(entry)

    def _run(self, entry: Entry) -> None:
        status = self.kubelet.run_pod(entry.local)
        entry.local_status = status
        container = entry.pod["spec"]["containers"][0]
        if status.get("phase") == POD_RUNNING:
            entry.probes = new_probes(container)
            entry.record.ready = "readiness" not in entry.probes
            self._event(entry, "Normal", "Started", f"Started container {container['name']}")
        else:
            self._observe(entry, status)

    def _restart(self, entry: Entry) -> None:
        # The process kubelet adopts a finished pod of the same uid; "interrupted" makes it start afresh.
        namespace, name = entry.key.split("/", 1)
        marker = self.kubelet.root / namespace / name / "interrupted"
        if marker.parent.exists():
            marker.touch()
        self.kubelet.delete_pod(entry.key)
        entry.restarting = False
        entry.record.waiting = None
        entry.record.restart_count += 1
        self._run(entry)

    def _observe(self, entry: Entry, status: dict) -> None:
        entry.local_status = status
        if status.get("phase") not in TERMINAL or entry.terminating_until is not None:
            return
        entry.probes = {}
        entry.record.ready = False
        terminated = container_state(status).get("terminated") or {}
        code = int(terminated.get("exitCode", 1))
        policy = entry.pod["spec"].get("restartPolicy") or "Always"
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            entry.record.last_terminated = terminated
            delay = min(self.crash_backoff * (2 ** entry.record.restart_count), MAX_BACKOFF_SECONDS)
            entry.restarting = True
            entry.retry_at = time.monotonic() + delay
            entry.record.waiting = ("CrashLoopBackOff",
                                    f"back-off {delay:g}s restarting failed container="
                                    f"{entry.pod['spec']['containers'][0]['name']} pod={entry.pod['metadata']['name']}")
            self._event(entry, "Warning", "BackOff", entry.record.waiting[1])
        else:
            entry.done = True

    def _report(self, entry: Entry) -> None:
        status = build_pod_status(entry.pod, entry.local_status, entry.record, utc_timestamp(), self.node_ip,
                                  restarting=entry.restarting, container_id=self._container_id(entry))
        serialised = json.dumps(status, sort_keys=True)
        if serialised == entry.written:
            return
        meta = entry.pod["metadata"]
        stored = self.api.patch_pod_status(meta["namespace"], meta["name"], status, entry.uid)
        entry.written = serialised
        if stored is None:  # gone, or another pod by now: the watch tells the rest
            log.info("%s: pod gone while writing its status", entry.key)

    def _container_id(self, entry: Entry) -> str:
        proc = self.kubelet.pods.get(entry.key)
        return f"process://{self.name}/{proc.pid}" if proc is not None and proc.pid else ""

    # ---------------------------------------------------------------------------------------------------- deletion
    def _begin_termination(self, entry: Entry) -> None:
        grace = entry.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = entry.pod["spec"].get("terminationGracePeriodSeconds", 30)
        entry.terminating_until = time.monotonic() + float(grace)
        proc = self.kubelet.pods.get(entry.key)
        if proc is not None and proc.pid and (entry.local_status or {}).get("phase") not in TERMINAL:
            self._event(entry, "Normal", "Killing", f"Stopping container {entry.pod['spec']['containers'][0]['name']}")
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        self._terminate(entry, time.monotonic())

    def _terminate(self, entry: Entry, now: float) -> None:
        status = self.kubelet.status(entry.key) if entry.key in self.kubelet.pods else entry.local_status
        running = status is not None and status.get("phase") not in TERMINAL and entry.local is not None
        if running and now < entry.terminating_until:
            return
        if running:
            self.kubelet.delete_pod(entry.key)  # SIGKILL to the process group
            started = (container_state(status).get("running") or {}).get("startedAt") or utc_timestamp()
            status = {"phase": POD_FAILED, "containerStatuses": [{"name": entry.pod["spec"]["containers"][0]["name"],
                      "state": {"terminated": {"exitCode": 137, "reason": "Error", "signal": 9,
                                               "startedAt": started, "finishedAt": utc_timestamp()}}}]}
        else:
            self.kubelet.delete_pod(entry.key)
        if status is not None and entry.local is not None:
            entry.local_status = status
            entry.restarting = False
            entry.record.ready = False
            self._report(entry)
        self._finish_deletion(entry.pod)
        self.entries.pop(entry.key, None)
        self.preparer.release(entry.pod)

    def _finish_deletion(self, pod: dict) -> None:
        meta = pod["metadata"]
        self.api.delete_pod_now(meta["namespace"], meta["name"], meta["uid"])

    def _forget(self, entry: Entry) -> None:
        """The pod is gone from the API (or replaced): stop its process, drop it."""
        self.kubelet.delete_pod(entry.key)
        self.entries.pop(entry.key, None)
        self.preparer.release(entry.pod)

    # ------------------------------------------------------------------------------------------------------ probes
    def _apply_probe_changes(self) -> None:
        while True:
            try:
                key, uid, kind, probe = self.probe_changes.get_nowait()
            except queue.Empty:
                return
            entry = self.entries.get(key)
            if entry is None or entry.uid != uid or entry.probes.get(kind) is not probe:
                continue
            if kind == "readiness":
                entry.record.ready = probe.passing
                if not probe.passing:
                    self._event(entry, "Warning", "Unhealthy", f"Readiness probe failed: {probe.message}")
            elif kind == "liveness" and not probe.passing:
                self._event(entry, "Warning", "Unhealthy", f"Liveness probe failed: {probe.message}")
                proc = self.kubelet.pods.get(key)
                if proc is not None and proc.pid:
                    self._event(entry, "Normal", "Killing", "Container failed liveness probe, will be restarted")
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass

    def _prober(self) -> None:
        while not self.stopping.wait(0.1):
            for entry in list(self.entries.values()):
                container = entry.pod["spec"]["containers"][0]
                for kind, probe in list(entry.probes.items()):
                    now = time.monotonic()
                    if not probe.due(now):
                        continue
                    success, message = run_probe(probe.probe, container, self.node_ip)
                    if probe.record(success, message, time.monotonic()):
                        self.probe_changes.put((entry.key, entry.uid, kind, probe))
                        self.wake()

    # ------------------------------------------------------------------------------------------------ node upkeep
    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(self.renew_seconds):
            try:
                self.api.renew_lease(self.node, self.lease_seconds)
                if time.monotonic() - last_status >= self.status_seconds:
                    self.post_node_status()
                    last_status = time.monotonic()
            except Exception as err:  # keep beating: the next renewal may succeed
                log.warning("node %s heartbeat failed: %s", self.name, err)

    def _watch_pods(self) -> None:
        version = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    pods, version = self.api.list_pods(self.name)
                    self.events.put(("SYNC", pods))
                    self.wake()
                for event in self.api.watch_pods(self.name, version, WATCH_SECONDS):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion") or version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.events.put((event["type"], obj))
                        self.wake()
                    if self.stopping.is_set():
                        return
            except ApiError as err:
                if err.status != 410:
                    log.warning("pod watch of node %s: %s", self.name, err)
                    self.stopping.wait(1.0)
                version = None  # list again
            except Exception as err:
                log.warning("pod watch of node %s: %r", self.name, err)
                self.stopping.wait(1.0)
                version = None

    def _event(self, entry: Entry, type_: str, reason: str, message: str) -> None:
        """Events are posted by their own thread: the main loop never waits for them."""
        self.outbox.put((entry.pod, type_, reason, message))

    def _post_events(self) -> None:
        while not self.stopping.is_set():
            try:
                pod, type_, reason, message = self.outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            self.api.create_event(pod, self.name, type_, reason, message)
