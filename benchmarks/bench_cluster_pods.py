"""Per-pod overhead of the node agent on the real control plane: a pod whose container runs `python -c pass` (the
worker image's python, as the agent runs it), created one at a time and bound by kube-scheduler; from one watch on
the pods (arrival times at this process): bound (spec.nodeName seen) -> Running seen -> Succeeded seen. The peer,
in the same run: the same command as a plain process (the venv's python, which the agent runs for `python`).

The overhead is bound->Succeeded minus the plain process's wall time; the ratio is bound->Succeeded over it.
Needs root and the built cluster tools; no chart install, so not the cluster tests' machine-wide lock (free ports only).
Prints one JSON line.  Usage: python benchmarks/bench_cluster_pods.py [--pods 11]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_cluster_up import local_cluster  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

COMMAND = ["python", "-c", "pass"]
LABEL = "fedtask.io/bench"
NAMESPACE = "default"


def pod_manifest(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {LABEL: "pod-overhead"}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "fedtask-worker:0.1.0", "command": COMMAND,
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


class Watcher:
    """First arrival of each pod state: bound, Running, Succeeded (monotonic seconds)."""

    def __init__(self, client):
        import kubernetes

        self.core = kubernetes.client.CoreV1Api(client)
        self.seen: dict[str, dict[str, float]] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import kubernetes

        listing = self.core.list_namespaced_pod(NAMESPACE, label_selector=LABEL, _preload_content=False)
        version = json.loads(listing.data)["metadata"]["resourceVersion"]
        self.ready.set()
        while not self.stop.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(
                        self.core.list_namespaced_pod, NAMESPACE, label_selector=LABEL, resource_version=version,
                        timeout_seconds=5, deserialize=False):
                    now = time.monotonic()
                    pod = event["object"]
                    version = pod["metadata"]["resourceVersion"]
                    states = self.seen.setdefault(pod["metadata"]["name"], {})
                    if pod["spec"].get("nodeName"):
                        states.setdefault("bound", now)
                    phase = (pod.get("status") or {}).get("phase")
                    if phase in ("Running", "Succeeded", "Failed"):
                        states.setdefault(phase, now)
            except Exception as error:  # keep watching; the result names the errors
                self.errors.append(repr(error))
                time.sleep(0.2)


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=11)
    args = parser.parse_args()
    python = str(ROOT / ".venv" / "bin" / "python")
    plain = []
    for _ in range(args.pods + 1):
        started = time.monotonic()
        subprocess.run([python, *COMMAND[1:]], check=True)
        plain.append(time.monotonic() - started)
    plain = plain[1:]  # the first warms the page cache

    with local_cluster(install=False) as cluster:
        watcher = Watcher(cluster.api_client())
        watcher.thread.start()
        watcher.ready.wait(10)
        names = [f"overhead-{i:02d}" for i in range(args.pods + 1)]
        for name in names:
            cluster.kubectl("create", "-f", "-", input=json.dumps(pod_manifest(name)))
            try:
                wait_for(lambda: {"Succeeded", "Failed"} & set(watcher.seen.get(name, {})), timeout=120, interval=0.02,
                         message=f"{name} to finish")
            except AssertionError as timed_out:
                raise RuntimeError(f"{timed_out}: {watcher.seen.get(name)}") from None
            if "Failed" in watcher.seen[name]:
                raise RuntimeError(f"{name} failed: {cluster.kubectl('describe', 'pod', name).stdout}")
        watcher.stop.set()
    samples = [watcher.seen[name] for name in names[1:]]  # the first pod warms the agent
    bound_to_done = [s["Succeeded"] - s["bound"] for s in samples]
    bound_to_running = [s["Running"] - s["bound"] for s in samples if "Running" in s]
    running_to_done = [s["Succeeded"] - s["Running"] for s in samples if "Running" in s]
    result = {
        "benchmark": "cluster_pod_overhead", "pods": len(samples), "command": " ".join(COMMAND),
        "bound_to_succeeded_median_ms": median_ms(bound_to_done),
        "bound_to_succeeded_max_ms": round(max(bound_to_done) * 1000, 1),
        "bound_to_running_median_ms": median_ms(bound_to_running) if bound_to_running else None,
        "running_to_succeeded_median_ms": median_ms(running_to_done) if running_to_done else None,
        "running_seen": len(bound_to_running),
        "plain_process_median_ms": median_ms(plain),
        "overhead_median_ms": round(median_ms(bound_to_done) - median_ms(plain), 1),
        "ratio_pod_vs_process": round(statistics.median(bound_to_done) / statistics.median(plain), 1),
        "watch_errors": len(watcher.errors),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
