"""The real control plane for the `cluster` suite (tests/cluster): `hack/local-cluster.sh` driven from Python, the
machine-wide lock that lets one installed cluster run at a time, kubectl against it, watches that record a task's
pods, and the helpers the cluster tests share (a small digits task, waiting for a task to finish, the operator's
Deployment, checks that kube-scheduler bound the pods)."""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import yaml

from fedtask_operator.core.phases import FINISHED_PHASES
from fedtask_operator.core.quantities import parse_quantity
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "local-cluster.sh"
NAMESPACE = "fedtask"
LOCK_PATH = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedtask" / "local-cluster-tests.lock"
LOCK_SECONDS = 600
SCHEDULED = re.compile(r"Successfully assigned (?P<namespace>[^/]+)/(?P<pod>\S+) to (?P<node>\S+)")


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

        def locked() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_for(locked, timeout=timeout, interval=1, message=f"another cluster test session to release {LOCK_PATH}")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class WatchRecorder:
    """A watch on the real API server in a background thread while the `with` block runs (`_run` in the subclass
    watches until `_stop` and sets `_ready` once it is listening); problems go to `errors` for the test to read."""

    def __init__(self, cluster: LocalCluster):
        self.client = cluster.api_client()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        raise NotImplementedError


class PodRecorder(WatchRecorder):
    """Every version of the pods of one task, as a watch on the real API server sees them (the operator deletes
    finished pods, so they are recorded while they exist)."""

    def __init__(self, cluster: LocalCluster, task: str, namespace: str = NAMESPACE):
        super().__init__(cluster)
        self.task = task
        self.namespace = namespace
        self.pods: dict[str, dict] = {}  # name -> the last version seen with spec.nodeName set (else the last)

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


def digits_task(name: str, rounds: int, devices: dict) -> str:
    """A small copy of examples/digits-quick.yaml in namespace fedtask."""
    with open(ROOT / "examples" / "digits-quick.yaml") as handle:
        task = yaml.safe_load(handle)
    task["metadata"] = {"name": name, "namespace": NAMESPACE}
    task["spec"]["devices"] = devices
    task["spec"]["rounds"] = {"max": rounds}
    return yaml.safe_dump(task)


def wait_for_phase(cluster: LocalCluster, name: str, timeout: float = 240, namespace: str = NAMESPACE) -> dict:
    """The task once it has Succeeded or Failed; after `timeout` s an AssertionError with its description, the
    namespace's pods and the components' logs."""
    seen: dict = {}

    def finished() -> dict | None:
        seen["task"] = cluster.get_json("federatedtask", name, "-n", namespace)
        return seen["task"] if (seen["task"].get("status") or {}).get("phase") in FINISHED_PHASES else None

    try:
        return wait_for(finished, timeout=timeout, interval=1, message=f"{namespace}/{name} to finish")
    except AssertionError as timed_out:
        phase = ((seen.get("task") or {}).get("status") or {}).get("phase")
        describe = cluster.kubectl("describe", "federatedtask", name, "-n", namespace, check=False).stdout
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        raise AssertionError(f"{timed_out} (still {phase})\n{describe}\n{pods}\n{cluster.logs()}") from None


def scheduled_events(cluster: LocalCluster) -> dict[str, dict]:
    """pod name -> its Scheduled event (from kube-scheduler: reportingComponent default-scheduler)."""
    events = cluster.get_json("events", "-n", NAMESPACE, "--field-selector", "reason=Scheduled")["items"]
    return {event["involvedObject"]["name"]: event for event in events}


def train_pods(recorder: PodRecorder) -> dict[str, dict]:
    return {name: pod for name, pod in recorder.pods.items()
            if pod["metadata"]["labels"].get("fedtask.io/stage") == "train"}


def fits(pod: dict, node: dict) -> list[str]:
    """Why the node cannot hold the pod (empty: it fits): Ready, the pod's node affinity, allocatable >= requests."""
    problems = []
    conditions = {c["type"]: c["status"] for c in node["status"].get("conditions") or []}
    if conditions.get("Ready") != "True":
        problems.append("node not Ready")
    terms = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    for term in terms:
        for expression in term.get("matchExpressions") or []:
            value = node["metadata"]["labels"].get(expression["key"])
            if expression["operator"] == "In" and value not in expression["values"]:
                problems.append(f"affinity {expression['key']} in {expression['values']}, node has {value}")
    requests = pod["spec"]["containers"][0].get("resources", {}).get("requests") or {}
    for resource, quantity in requests.items():
        available = node["status"]["allocatable"].get(resource)
        if available is None or parse_quantity(available) < parse_quantity(quantity):
            problems.append(f"{resource}: requests {quantity}, node has {available}")
    return problems


def assert_bound_by_scheduler(cluster: LocalCluster, task: dict, pods: dict[str, dict]) -> dict[str, str]:
    """Every train pod of every round was bound by default-scheduler to a node that fits; returns pod -> node."""
    history = task["status"]["history"]
    name = task["metadata"]["name"]
    expected = {f"{name}-r{entry['round']:04d}-train-{device}" for entry in history for device in entry["devices"]}
    recorded = {re.sub(r"-a\d+$", "", pod) for pod in pods}
    assert expected <= recorded, f"train pods never seen: {sorted(expected - recorded)}"
    events = scheduled_events(cluster)
    nodes = {node["metadata"]["name"]: node for node in cluster.get_json("nodes")["items"]}
    placement = {}
    for pod_name, pod in pods.items():
        event = events.get(pod_name)
        assert event is not None, f"{pod_name}: no Scheduled event"
        assert event["reportingComponent"] == "default-scheduler", event
        match = SCHEDULED.match(event["message"])
        assert match and match["pod"] == pod_name, event["message"]
        assert pod["spec"]["nodeName"] == match["node"], (pod_name, pod["spec"]["nodeName"], event["message"])
        scheduled = [c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"]
        assert scheduled and scheduled[0]["status"] == "True", (pod_name, pod["status"].get("conditions"))
        assert fits(pod, nodes[match["node"]]) == [], (pod_name, match["node"], fits(pod, nodes[match["node"]]))
        placement[pod_name] = match["node"]
    return placement


class CreationRecorder(PodRecorder):
    """PodRecorder that also keeps every uid seen under each pod name: a name created twice has two uids."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.uids: dict[str, set[str]] = {}
        self.created: list[tuple[float, dict]] = []  # (time.monotonic() when first seen, the pod), in order

    def _record(self, pod: dict) -> None:
        uids = self.uids.setdefault(pod["metadata"]["name"], set())
        if pod["metadata"]["uid"] not in uids:
            uids.add(pod["metadata"]["uid"])
            self.created.append((time.monotonic(), pod))
        super()._record(pod)


def operator_deployment(cluster: LocalCluster) -> dict:
    deployments = cluster.get_json("deployments", "-n", NAMESPACE)["items"]
    operators = [d for d in deployments if "minio" not in d["metadata"]["name"]]
    assert len(operators) == 1, [d["metadata"]["name"] for d in deployments]
    return operators[0]


def operator_pods(cluster: LocalCluster) -> list[dict]:
    labels = operator_deployment(cluster)["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    return cluster.get_json("pods", "-n", NAMESPACE, "-l", selector)["items"]


def scale_operator(cluster: LocalCluster, replicas: int) -> None:
    deployment = operator_deployment(cluster)["metadata"]["name"]
    cluster.kubectl("scale", "deployment", deployment, "-n", NAMESPACE, f"--replicas={replicas}")
    if replicas == 0:
        wait_for(lambda: not operator_pods(cluster), timeout=60, interval=0.5, message="the operator pod to go")
    else:
        cluster.kubectl("rollout", "status", "deployment", deployment, "-n", NAMESPACE, "--timeout=90s", timeout=100)


def minio_deployment(cluster: LocalCluster) -> dict:
    found = [d for d in cluster.get_json("deployments", "-n", NAMESPACE)["items"] if "minio" in d["metadata"]["name"]]
    assert len(found) == 1, found
    return found[0]


def minio_pods(cluster: LocalCluster, deployment: dict) -> list[dict]:
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    return cluster.get_json("pods", "-n", NAMESPACE, "-l", selector)["items"]


def store_credentials(cluster: LocalCluster, deployment: dict) -> tuple[str, str]:
    """The chart MinIO's access and secret key, from the Secret its Deployment reads them from."""
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env") or []}
    secret_name = next(e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if e.get("valueFrom"))
    data = cluster.get_json("secret", secret_name, "-n", NAMESPACE)["data"]
    decoded = {k: base64.b64decode(v).decode() for k, v in data.items()}
    access = decoded.get("AWS_ACCESS_KEY_ID") or decoded.get("MINIO_ROOT_USER") or decoded.get("rootUser")
    secret = decoded.get("AWS_SECRET_ACCESS_KEY") or decoded.get("MINIO_ROOT_PASSWORD") or decoded.get("rootPassword")
    assert access and secret, f"no MinIO credentials in Secret {secret_name}: {sorted(decoded)}"
    return access, secret


@contextlib.contextmanager
def installed_cluster(directory: Path):
    """`hack/local-cluster.sh up` and `install` into `directory` under the machine lock; `down` whatever happened."""
    with machine_lock(timeout=LOCK_SECONDS):
        try:
            timings = {"up": run_script("up", "--dir", str(directory), timeout=900)}
            timings["install"] = run_script("install", "--dir", str(directory), timeout=600)
            yield LocalCluster(dir=directory, env=read_env(directory / "env"), timings=timings)
        finally:
            run_script("down", "--dir", str(directory), timeout=120)


def host_operator_command(cluster: LocalCluster, *mode: str) -> tuple[list[str], dict]:
    """`fedtask operator` as a process on this host with the chart Deployment's arguments and plain environment,
    and `mode` (e.g. `--standalone`, or `--leader-election` with its options) in place of the chart's leader lock or
    peering; no metrics port, liveness server or store cleanup. Scale the chart's Deployment to zero meanwhile."""
    container = operator_deployment(cluster)["spec"]["template"]["spec"]["containers"][0]
    args = [arg for arg in container["args"][1:]
            if not arg.startswith(("--metrics-port", "--liveness", "--cleanup-store", "--leader-election",
                                   "--lease-", "--peering"))]
    env = dict(cluster.env, PYTHONUNBUFFERED="1", POD_NAMESPACE=NAMESPACE)
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in (item.get("valueFrom") or {}):  # the store's keys (namespace credentials)
            ref = item["valueFrom"]["secretKeyRef"]
            data = cluster.get_json("secret", ref["name"], "-n", NAMESPACE).get("data") or {}
            if ref["key"] in data:
                env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
    # On this host the chart's in-cluster store address does not resolve, so the operator neither issues namespace
    # store keys nor checks the bucket it would sign URLs for: its pods read the chart's MinIO Secret (in the tasks'
    # namespace) instead, which the chart's default presigned URLs would refuse alongside.
    secrets = {(item.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") for item in container.get("env") or []
               if item["name"] == "AWS_ACCESS_KEY_ID"} - {None}
    args += ["--no-namespace-credentials", "--no-presigned-urls", *[f"--store-secret={name}" for name in secrets]]
    command = [sys.executable, "-m", "fedtask_operator.cli", "operator", *args, "--metrics-port=0", "--liveness=",
               "--no-cleanup-store", *mode]
    return command, env


class TaskRecorder(WatchRecorder):
    """Every version of one FederatedTask a watch on the real API server delivers, in order (`versions`; a dropped
    stream lists again, so versions in between may be missing, never reordered); `latest` is the newest."""

    def __init__(self, cluster: LocalCluster, name: str, namespace: str = NAMESPACE):
        super().__init__(cluster)
        self.name, self.namespace = name, namespace
        self.versions: list[dict] = []

    @property
    def latest(self) -> dict:
        return self.versions[-1] if self.versions else {}

    def _run(self) -> None:
        import kubernetes

        api = kubernetes.client.CustomObjectsApi(self.client)
        version = None
        while not self._stop.is_set():
            try:
                stream = kubernetes.watch.Watch().stream(
                    api.list_namespaced_custom_object, "fedtask.io", "v1alpha1", self.namespace, "federatedtasks",
                    field_selector=f"metadata.name={self.name}", resource_version=version, timeout_seconds=5)
                self._ready.set()
                for event in stream:
                    task = event["object"]
                    if event["type"] == "ERROR":  # 410: the version is too old, list again
                        version = None
                        break
                    version = task["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self.versions.append(task)
                    if self._stop.is_set():
                        break
            except Exception as error:  # a dropped stream: list again
                self.errors.append(repr(error))
                version = None
                time.sleep(0.2)
