"""The real control plane for the `cluster` suite: `hack/local-cluster.sh up` + `install` into a temporary folder once
per test module (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, MinIO, node agents; the Helm chart
with its own MinIO), `down` after the module's tests whatever happened.

Needs root (the node agents use PID and mount namespaces) and the built binaries (`hack/install-cluster-tools.sh`,
which `make test-cluster` runs first: a cold build takes many minutes, more than a test's timeout).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "local-cluster.sh"
NAMESPACE = "fedtask"
LOCK_PATH = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedtask" / "local-cluster-tests.lock"
LOCK_SECONDS = 600


def read_env(path: Path) -> dict:
    """The `export NAME="value"` lines of DIR/env, with $PATH expanded against this process's PATH."""
    env = dict(os.environ)
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = value.strip('"').replace("$PATH", os.environ.get("PATH", ""))
    return env


@dataclass
class LocalCluster:
    dir: Path
    env: dict
    timings: dict = field(default_factory=dict)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=self.env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def api_client(self):
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=self.env["KUBECONFIG"])

    def logs(self, lines: int = 30) -> str:
        """The tail of every component's log (for failure messages)."""
        out = []
        for path in sorted((self.dir / "logs").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


def run_script(*args: str, timeout: float) -> float:
    started = time.monotonic()
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return time.monotonic() - started


@contextlib.contextmanager
def machine_lock(timeout: float):
    """One installed cluster per machine at a time: pods share the machine's network and the chart's MinIO pod
    listens on :9000. Concurrent sessions (several people's test runs on one machine) wait for each other."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another cluster test session held {LOCK_PATH} for {timeout:.0f}s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> LocalCluster:
    """A cluster for the tests of one module (it goes when the module's tests are done, not at the session's end:
    runs of the whole suite do not keep it up while the other suites run)."""
    directory = tmp_path_factory.mktemp("cluster")
    with machine_lock(timeout=LOCK_SECONDS):
        try:
            timings = {"up": run_script("up", "--dir", str(directory), timeout=900)}
            timings["install"] = run_script("install", "--dir", str(directory), timeout=600)
            yield LocalCluster(dir=directory, env=read_env(directory / "env"), timings=timings)
        finally:
            run_script("down", "--dir", str(directory), timeout=120)


class PodRecorder:
    """Every version of the pods of one task, as a watch on the real API server sees them (the operator deletes
    finished pods, so they are recorded while they exist)."""

    def __init__(self, cluster: LocalCluster, task: str, namespace: str = NAMESPACE):
        self.client = cluster.api_client()
        self.task = task
        self.namespace = namespace
        self.pods: dict[str, dict] = {}  # name -> the last version seen with spec.nodeName set (else the last)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodRecorder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.client)
        selector = f"fedtask.io/task={self.task}"
        version = None
        while not self._stop.is_set():
            try:
                if version is None:  # (re)list, then watch every change from there on
                    listing = json.loads(core.list_namespaced_pod(self.namespace, label_selector=selector,
                                                                  _preload_content=False).data)
                    for pod in listing["items"]:
                        self._record(pod)
                    version = listing["metadata"]["resourceVersion"]
                    self._ready.set()
                watcher = kubernetes.watch.Watch()
                for event in watcher.stream(core.list_namespaced_pod, self.namespace, label_selector=selector,
                                            resource_version=version, timeout_seconds=5, deserialize=False):
                    version = event["object"]["metadata"]["resourceVersion"]
                    self._record(event["object"])
                    if self._stop.is_set():
                        watcher.stop()
            except kubernetes.client.ApiException as err:
                if err.status != 410:  # 410: the version is too old, list again
                    self.errors.append(repr(err))
                version = None
            except Exception as err:  # keep watching; the test reads self.errors
                self.errors.append(repr(err))
                version = None
                time.sleep(0.2)

    def _record(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        if pod["spec"].get("nodeName") or name not in self.pods:
            self.pods[name] = pod
