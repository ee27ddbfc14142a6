"""A test kubelet for the emulated API: runs every pod the operator creates as a real local process
(`fedtask_operator.local.kubelet.ProcessKubelet`) and writes phases and termination messages back through the HTTP API.

It also plays kube-scheduler's binding (spec.nodeName from the pod's hostname affinity) and can inject failures:
`fail_pods(prefix, times)` makes the next `times` pods whose name starts with `prefix` fail with exit code 1 (or, with
`exit_code=137, reason="OOMKilled"`, as the kubelet reports a container the kernel killed for memory).
"""
from __future__ import annotations

import pathlib
import re
import threading

from fedtask_operator.core.naming import pinned_node
from fedtask_operator.local.files import utc_timestamp
from fedtask_operator.local.kubelet import ProcessKubelet
from tests.support.kube import PODS, ApiError, EmulatedCluster

INJECTED_EXIT_CODE = 1


def _matches(name: str, prefix: str) -> bool:
    """`prefix` ending in '-' matches any pod starting with it; otherwise the pod's name without `-aN`."""
    return name.startswith(prefix) if prefix.endswith("-") else re.sub(r"-a\d+$", "", name) == prefix


def _failed_status(pod: dict, exit_code: int = INJECTED_EXIT_CODE, reason: str = "Error") -> dict:
    name = (pod["spec"]["containers"][0] or {}).get("name", "main")
    now = utc_timestamp()
    return {"phase": "Failed", "containerStatuses": [{"name": name, "ready": False, "restartCount": 0, "state": {
        "terminated": {"exitCode": exit_code, "reason": reason, "message": "injected failure",
                       "startedAt": now, "finishedAt": now}}}]}


class ApiKubelet:
    def __init__(self, cluster: EmulatedCluster, root: pathlib.Path, base_env: dict | None = None,
                 interval: float = 0.02, launcher=None):
        self.cluster = cluster
        self.processes = ProcessKubelet(root, base_env=base_env, launcher=launcher)
        self.interval = interval
        self.started: list[str] = []  # names of every pod started, in order (duplicates would show here)
        self.bindings: dict[str, str] = {}  # pod name -> node
        self.neighbours: dict[str, list[str]] = {}  # pod name -> pods still running on its node when it started
        self._held: set[str] = set()  # name prefixes whose final status is withheld until released
        self._withheld: dict[str, tuple[str, dict]] = {}  # pod name -> (namespace, status) not yet written
        self._failures: dict[str, int] = {}
        self._failure_kinds: dict[str, tuple[int, str]] = {}  # prefix -> (exit code, reason) of its injected failures
        self.failed: list[tuple[str, int, str]] = []  # (pod name, exit code, reason) of every injected failure
        self._injected: set[str] = set()  # pods failed by injection (never run)
        self._device_failures: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-kubelet", daemon=True)
        self.paused = threading.Event()  # set: pods are observed but no status is written back
        self.errors: list[str] = []

    def fail_pods(self, prefix: str, times: int, exit_code: int = INJECTED_EXIT_CODE, reason: str = "Error") -> None:
        self._failures[prefix] = times
        self._failure_kinds[prefix] = (exit_code, reason)

    def fail_device(self, prefix: str, times: int) -> None:
        """The first pod started whose name starts with `prefix` picks the device: its next `times` pods fail
        (the attempt suffix `-aN` is ignored), e.g. fail_device("t-r0001-train-", 2)."""
        self._device_failures = (prefix, times)

    def hold(self, prefix: str) -> None:
        """Pods starting with `prefix` run, but the API sees them Running until `release(prefix)`."""
        self._held.add(prefix)

    def release(self, prefix: str) -> None:
        self._held.discard(prefix)

    def __enter__(self) -> ApiKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.processes.stop_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as error:  # keep running; the test reads self.errors
                self.errors.append(repr(error))
            self._stop.wait(self.interval)

    def sync(self) -> None:
        pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in self.cluster.objects(PODS)}
        self._injected &= set(pods)
        for key in list(self.processes.pods):
            running_uid = self.processes.pods[key].pod["metadata"].get("uid")
            if key not in pods or pods[key]["metadata"].get("uid") != running_uid:
                self.processes.delete_pod(key)
        for key, pod in pods.items():
            finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            if key in self.processes.pods or key in self._injected or finished:
                continue
            namespace, name = key.split("/", 1)
            node = pinned_node(pod) or ""
            running = {key_.split("/", 1)[1] for key_ in self.processes.running()} | set(self._withheld)
            self.neighbours[name] = sorted(other for other in running if node and self.bindings.get(other) == node)
            self.bindings[name] = node
            self.started.append(name)
            if self._device_failures and name.startswith(self._device_failures[0]):
                _, times = self._device_failures
                self._failures[re.sub(r"-a\d+$", "", name)] = times
                self._device_failures = None
            prefix = next((p for p, n in self._failures.items() if n > 0 and _matches(name, p)), None)
            if prefix is not None:
                self._failures[prefix] -= 1
                exit_code, reason = self._failure_kinds.get(prefix, (INJECTED_EXIT_CODE, "Error"))
                self._write(namespace, name, _failed_status(pod, exit_code, reason), node)
                self.failed.append((name, exit_code, reason))
                self._injected.add(key)
                continue
            self.processes.run_pod(pod)
        if self.paused.is_set():
            return
        for pod, status in self.processes.poll():
            self._withheld[pod["metadata"]["name"]] = (pod["metadata"].get("namespace") or "default", status)
        for name, (namespace, status) in list(self._withheld.items()):
            if status.get("phase") in ("Succeeded", "Failed") and any(name.startswith(p) for p in self._held):
                continue
            del self._withheld[name]
            self._write(namespace, name, status, self.bindings.get(name, ""))

    def _write(self, namespace: str, name: str, status: dict, node: str) -> bool:
        patch = {"status": status}
        if node:
            patch["spec"] = {"nodeName": node}
        try:
            self.cluster.patch(PODS, namespace, name, patch, subresource="status")
            return True
        except ApiError as error:
            if error.status == 404:
                return False
            raise
