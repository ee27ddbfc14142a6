"""`fedtask operator` as a subprocess against an emulated cluster: start, kill, scrape metrics, read a task's status and
events; the small digits task the API scenarios run."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request

from fedtask_operator.core.phases import FINISHED_PHASES
from tests.support.kube import EVENTS, FEDERATEDTASKS, EmulatedCluster
from tests.support.s3 import S3Server, free_port


class OperatorProcess:
    def __init__(self, cluster: EmulatedCluster, s3: S3Server, log_path, *extra: str, bucket: str = "fedtask",
                 namespaces: tuple[str, ...] = ("default",), resync_seconds: float = 2.0):
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.args = [sys.executable, "-m", "fedtask_operator.cli", "operator",
                     *[f"--namespace={ns}" for ns in namespaces],
                     f"--metrics-port={self.metrics_port}",
                     f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
                     f"--store-endpoint={s3.endpoint}", f"--store-bucket={bucket}", "--no-store-secure",
                     f"--store-region={s3.region}", f"--resync-seconds={resync_seconds}", *extra]
        self.env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a node dying under the operator."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read().decode(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels must all match), or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        match = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return None


def task_status(cluster: EmulatedCluster, name: str, namespace: str = "default") -> dict:
    task = cluster.get(FEDERATEDTASKS, namespace, name)
    return (task or {}).get("status") or {}


def task_events(cluster: EmulatedCluster, name: str, namespace: str = "default") -> list[dict]:
    return [event for event in cluster.objects(EVENTS, namespace)
            if (event.get("involvedObject") or {}).get("name") == name
            and (event.get("involvedObject") or {}).get("kind") == "FederatedTask"]


DEVICE = {"fedtask.io/device": "true"}  # the labels of a candidate device node


def digits_task(name: str, rounds: int = 3, **spec_overrides) -> dict:
    """A tiny task: 8x8 digits, an MLP, 4 simulated devices, 2 per round."""
    spec = {
        "model": {"name": "mlp", "args": {"hidden": 16}},
        "data": {"dataset": "digits", "partition": {"scheme": "iid"}, "shared": {"fraction": 0.05}},
        "devices": {"count": 4, "perRound": 2, "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}},
        "training": {"localEpochs": 1, "batchSize": 32},
        "adjustment": {"enabled": True, "epochs": 1},
        "rounds": {"max": rounds},
        "podRetryLimit": 1,
    }
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def finished(cluster: EmulatedCluster, name: str) -> dict | None:
    """The task's status once it has succeeded or failed, else None."""
    status = task_status(cluster, name)
    return status if status.get("phase") in FINISHED_PHASES else None
