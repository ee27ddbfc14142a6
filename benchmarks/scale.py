"""Scale: what foreign pods (pods fedtask did not create) cost the operator, and a scheduling pass at 10k nodes x 100
tasks. Prints one JSON line.

1. Index bytes per foreign pod, in process (tracemalloc): the pod index as it was (each pod's metadata, affinity and
   containers deep-copied) against kube/pod_index.py's summaries, for the same realistic pods (a dozen env vars,
   mounts, probes, two containers). Peer: the old index, as a ratio.
2. The real operator process (`fedtask operator` against the API emulator, kmock), started with 0 and with each
   of `--foreign-pods` (e.g. 2000,20000) foreign pods in the cluster: its RSS once it has listed and indexed them
   and settled, its CPU seconds until then; bytes per foreign pod against 0 and the slope between the two largest
   sizes. Target: slope <= 1 KB (against 0 adds the one-off cost of the first list page). `--compare-tree DIR`
   runs an older source tree (e.g. `git archive` of the commit before kube/pod_watch.py, when kopf watched pods) at
   `--compare-pods` sizes: the peer, as ratios.
4. `--real`: the same on the real control plane (hack/local-cluster.sh up: etcd, kube-apiserver, scheduler,
   controller-manager): `--real-tasks` FederatedTasks (waiting for devices; their server pods pinned to no node)
   and `--real-pods` foreign pods, created concurrently and bound to fake nodes (nothing runs them; they tolerate
   the fake nodes' unreachable taints). The operator runs cluster-wide, started twice before the pods (the first
   start creates the tasks' server pods; the second is the baseline) and once after, and namespaced (the tasks'
   namespace) after; RSS and CPU seconds at each, and over a steady minute. `--real-create-seconds` stops creating
   pods at a time budget. Takes the machine's cluster lock.
3. One learning period's device selection at 10,000 nodes x 100 tasks (benchmarks/bench_sched_speed.py's fleet and
   requests) from the full pod dicts, and as the operator runs it: from the summaries, expanded per pass. Target
   <= 200 ms.

    python benchmarks/scale.py [--foreign-pods 2000,20000] [--nodes 10000] [--tasks 100] [--no-process]
                               [--compare-tree DIR] [--real [--real-pods 100000] [--real-tasks 1000]]
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sched_speed import POOLS, best_of, make_requests  # noqa: E402

from fedtask_operator.core.scheduling import select_devices  # noqa: E402
from fedtask_operator.core.scheduling.synthetic import make_fleet  # noqa: E402
from fedtask_operator.kube import pod_index  # noqa: E402

TARGET_BYTES_PER_POD = 1024
TARGET_PASS_SECONDS = 0.2


def foreign_pod(i: int, nodes: int = 1000) -> dict:
    """A pod as the API server returns it: a web app with a sidecar, bound to a node, running."""
    env = [{"name": f"SETTING_{k}", "value": f"value-{k}-" + "x" * 24} for k in range(12)]
    container = {"name": "app", "image": "registry.example.com/team/app:1.24.3",
                 "command": ["/bin/app"], "args": ["--port=8080", "--log-level=info", f"--shard={i % 64}"],
                 "env": env, "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                                  {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/"
                                                                          "serviceaccount", "readOnly": True}],
                 "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                 "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}
    sidecar = {"name": "proxy", "image": "registry.example.com/mesh/proxy:1.20",
               "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}, "env": env[:4]}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"web-{i:06d}-7d9f8c", "namespace": f"team-{i % 20}", "uid": f"uid-{i:012d}",
                     "resourceVersion": str(1000 + i), "creationTimestamp": "2026-12-01T10:00:00Z",
                     "labels": {"app": "web", "pod-template-hash": "7d9f8c", "team": f"team-{i % 20}"},
                     "annotations": {"checksum/config": "a" * 64},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c",
                                          "uid": "rs-uid", "controller": True}]},
        "spec": {"nodeName": f"node-{i % nodes:05d}", "containers": [container, sidecar],
                 "volumes": [{"name": "config", "configMap": {"name": "web"}}],
                 "serviceAccountName": "web", "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"},
        "status": {"phase": "Running", "podIP": f"10.0.{i // 250 % 250}.{i % 250}",
                   "conditions": [{"type": t, "status": "True"} for t in ("Ready", "PodScheduled", "Initialized")]},
    }


def old_index_value(body: dict) -> dict:
    """The pod index before kube/pod_index.py (handlers.pod_objects up to this change), for the comparison."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    return {"metadata": {"name": body["metadata"].get("name"), "namespace": body["metadata"].get("namespace"),
                         "labels": dict(body["metadata"].get("labels") or {})},
            "spec": {"nodeName": spec.get("nodeName"), "affinity": copy.deepcopy(spec.get("affinity")),
                     "containers": copy.deepcopy(list(spec.get("containers") or [])),
                     "initContainers": copy.deepcopy(list(spec.get("initContainers") or []))},
            "status": {"phase": status.get("phase")}}


def retained_bytes(make, count: int) -> float:
    """Bytes per pod that `make` keeps (pods arrive as fresh JSON, as from a watch, and are dropped after)."""
    bodies = [json.loads(json.dumps(foreign_pod(i))) for i in range(count)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [make(body) for body in bodies]
    del bodies
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(kept) == count
    return (after - before) / count


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def settled_rss(pid: int, least_seconds: float = 8.0, quiet_seconds: float = 4.0, timeout: float = 300.0) -> int:
    """The process's RSS once it has not changed by more than 1% for `quiet_seconds` (after `least_seconds`)."""
    started = time.monotonic()
    last, last_change = rss_bytes(pid), time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(0.5)
        now = rss_bytes(pid)
        if abs(now - last) > last * 0.01:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - started >= least_seconds and time.monotonic() - last_change >= quiet_seconds:
            return now
    raise RuntimeError(f"the operator's RSS did not settle within {timeout}s")


MARKER = "zz-marker"  # a fedtask-labelled pod stored after the foreign ones (kopf's pod handler runs once indexed)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def pods_indexed(log: str, count: int) -> bool:
    """The operator has listed every pod: kube/pod_watch.py logs the list; an older tree's kopf handler saw the
    marker pod (listed after the foreign ones)."""
    return "Handler 'pod_changed'" in log or bool(re.search(rf"pods listed[^:]*: {count}\b", log))


def operator_rss(count: int, workdir: Path, tree: str = "") -> dict:
    """`fedtask operator` started with `count` foreign pods (and the marker) in the emulator: settled RSS, CPU
    seconds until then, seconds to settle."""
    from tests.support.kube import EmulatedCluster
    from tests.support.operator import OperatorProcess
    from tests.support.s3 import run_s3_server

    with run_s3_server() as s3, EmulatedCluster(workdir / f"cluster-{count}") as cluster:
        async def load(start: int, stop: int) -> None:
            for i in range(start, stop):
                pod = foreign_pod(i)
                pod["metadata"]["namespace"] = "default"  # the emulated cluster's namespace
                del pod["metadata"]["ownerReferences"]  # the emulator's garbage collector would take them
                cluster.emulator.objects["v1/pods", "default", pod["metadata"]["name"]] = pod
        for start in range(0, count, 5000):
            cluster.call(load(start, min(count, start + 5000)), timeout=600)
        marker = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": MARKER, "namespace": "default",
                                                                  "labels": {"fedtask.io/task": MARKER}},
                  "spec": {"containers": [{"name": "x", "image": "x"}]}, "status": {"phase": "Pending"}}

        async def mark() -> None:
            cluster.emulator.objects["v1/pods", "default", MARKER] = marker
        cluster.call(mark())
        operator = OperatorProcess(cluster, s3, workdir / f"operator-{count}-{bool(tree)}.log", "--standalone",
                                   "--verbose")
        if tree:  # the operator from another source tree (an older commit, for a before/after)
            operator.env["PYTHONPATH"] = os.pathsep.join(str(Path(tree) / p) for p in ("operator", "worker_image"))
        with operator:
            started = time.monotonic()
            while not pods_indexed(operator.log(), count + 1):  # every pod listed and indexed
                if time.monotonic() - started > 900 or operator.process.poll() is not None:
                    raise RuntimeError(f"the operator did not index the pods:\n{operator.log()[-3000:]}")
                time.sleep(0.5)
            rss = settled_rss(operator.process.pid)
            return {"rss": rss, "cpu": cpu_seconds(operator.process.pid), "seconds": time.monotonic() - started}


def process_measure(sizes: list[int], tree: str) -> dict:
    """RSS and CPU of the operator at 0 and each size; bytes per foreign pod against 0 and between the two largest."""
    with tempfile.TemporaryDirectory(prefix="fedtask-scale-") as tmp:
        runs = {size: operator_rss(size, Path(tmp), tree) for size in [0, *sizes]}
    largest = sizes[-1]
    low = sizes[-2] if len(sizes) > 1 else 0
    return {"rss_mb": {str(n): round(run["rss"] / 2**20, 1) for n, run in runs.items()},
            "cpu_seconds": {str(n): round(run["cpu"], 2) for n, run in runs.items()},
            "settle_seconds": {str(n): round(run["seconds"], 1) for n, run in runs.items()},
            "bytes_per_foreign_pod": round((runs[largest]["rss"] - runs[0]["rss"]) / largest),
            "slope_bytes_per_foreign_pod": round((runs[largest]["rss"] - runs[low]["rss"]) / (largest - low))}


# ---------------------------------------------------------------------------------------------- the real control plane
REAL_NAMESPACES = 20
REAL_NODES = 100


def _real_pod(i: int) -> dict:
    pod = foreign_pod(i, nodes=REAL_NODES)
    metadata = pod["metadata"]
    pod["metadata"] = {key: metadata[key] for key in ("name", "labels", "annotations")}
    pod["metadata"]["namespace"] = f"bench-{i % REAL_NAMESPACES}"
    pod["spec"]["nodeName"] = f"bench-node-{i % REAL_NODES:03d}"
    pod["spec"]["tolerations"] = [{"operator": "Exists"}]  # the fake nodes turn unreachable: no eviction
    pod["spec"]["serviceAccountName"] = "default"
    pod["spec"]["automountServiceAccountToken"] = False
    for container in pod["spec"]["containers"]:  # no token volume without automounting
        container["volumeMounts"] = [m for m in container.get("volumeMounts") or () if m["name"] != "kube-api-access"]
    del pod["status"]
    return pod


def _real_task(i: int) -> dict:
    from tests.support.operator import digits_task

    task = digits_task(f"bench-task-{i:04d}", rounds=1)
    task["metadata"]["namespace"] = "bench-tasks"
    task["spec"]["server"] = {"nodeSelector": {"fedtask.io/bench": "no-such-node"}}  # its pods wait, unscheduled
    task["spec"]["devices"]["selector"] = {"matchLabels": {"fedtask.io/bench": "no-such-device"}}  # it waits
    return task


def _create_all(client, make, count: int, threads: int = 32, stop_at: float | None = None) -> tuple[float, int]:
    """POST `count` objects (make(i) -> (API path, body)) from `threads` threads, each request on a kept-alive
    connection of the client's own pool (its TLS and credentials), the body encoded once and the response not
    decoded; stop starting new ones at monotonic `stop_at`. Returns the seconds it took and how many were created."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    client.configuration.connection_pool_maxsize = threads
    client.rest_client = type(client.rest_client)(client.configuration)  # a pool as large as the thread count
    pool = client.rest_client.pool_manager
    host = client.configuration.host
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    token = (client.configuration.api_key or {}).get("authorization") or (client.configuration.api_key or {}).get(
        "BearerToken")
    if token:
        headers["Authorization"] = token if token.lower().startswith("bearer ") else f"Bearer {token}"
    created = [0]
    lock = threading.Lock()

    def create(i: int) -> None:
        if stop_at is not None and time.monotonic() > stop_at:
            return
        path, body = make(i)
        data = json.dumps(body, separators=(",", ":")).encode()
        for attempt in range(20):
            try:
                response = pool.request("POST", host + path, body=data, headers=headers, retries=False,
                                        timeout=60.0)
                status = response.status
            except Exception:  # a dropped connection: the API server is busy
                status = None
            if status is not None and (status < 300 or status == 409):  # 409: an earlier attempt landed
                with lock:
                    created[0] += status < 300 or attempt > 0
                return
            if attempt == 19 or (status and 400 <= status < 500 and status != 429):
                raise RuntimeError(f"POST {path} failed: {status} {response.data[:500]!r}" if status else
                                   f"POST {path} failed after {attempt + 1} attempts")
            time.sleep(0.5 * (attempt + 1))
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as executor:
        for _ in executor.map(create, range(count), chunksize=64):
            pass
    return time.monotonic() - started, created[0]


def real_operator(env: dict, workdir: Path, label: str, pods: int, tree: str, steady_seconds: float,
                  namespaces: tuple[str, ...] = ()) -> dict:
    """`fedtask operator -A` on the real API server: seconds until its pod list is in, RSS and CPU seconds then, after
    it settles, and over `steady_seconds` more (the tasks' resync timers and scheduling passes)."""
    import subprocess

    log_path = workdir / f"operator-{label}.log"
    # a tree from before kube/pod_watch.py (kopf watched pods) logs no "pods listed"
    own_watch = (Path(tree or ROOT) / "operator" / "fedtask_operator" / "kube" / "pod_watch.py").is_file()
    scope = [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
    args = [sys.executable, "-m", "fedtask_operator.cli", "operator", *scope, "--standalone",
            "--metrics-port=0", "--liveness=", f"--store-endpoint={env['FEDTASK_MINIO_ENDPOINT']}",
            "--store-bucket=fedtask", "--no-store-secure"]
    proc_env = dict(env, PYTHONUNBUFFERED="1", AWS_ACCESS_KEY_ID=env["FEDTASK_MINIO_ACCESS_KEY"],
                    AWS_SECRET_ACCESS_KEY=env["FEDTASK_MINIO_SECRET_KEY"])
    if tree:
        proc_env["PYTHONPATH"] = os.pathsep.join(str(Path(tree) / p) for p in ("operator", "worker_image"))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, env=proc_env, stdout=log, stderr=subprocess.STDOUT)
    timeline: list[tuple[float, float]] = []  # (seconds since start, RSS MB): when memory grows, next to the log

    def sample() -> int:
        rss = rss_bytes(process.pid)
        if not timeline or time.monotonic() - started - timeline[-1][0] >= 5:
            timeline.append((round(time.monotonic() - started, 1), round(rss / 2**20, 1)))
        return rss
    try:
        started = time.monotonic()
        peak = 0
        while True:
            text = log_path.read_text(errors="replace")
            peak = max(peak, sample())
            if ("Handler 'task_changed'" in text or "Handler 'task_resync'" in text or "Timer 'task_resync'" in text) \
                    and (not own_watch or re.search(r"pods listed[^:]*: \d+", text)):
                break
            if time.monotonic() - started > 1800 or process.poll() is not None:
                raise RuntimeError(f"the operator did not start handling tasks:\n{text[-3000:]}")
            time.sleep(0.5)
        ready = time.monotonic() - started
        ready_cpu = cpu_seconds(process.pid)
        try:
            rss = settled_rss(process.pid, timeout=90)
        except RuntimeError:
            rss = rss_bytes(process.pid)
        cpu_before, t_before = cpu_seconds(process.pid), time.monotonic()
        while time.monotonic() - t_before < steady_seconds:
            peak = max(peak, sample())
            time.sleep(1)
        steady_cpu = (cpu_seconds(process.pid) - cpu_before) / (time.monotonic() - t_before)
        final = rss_bytes(process.pid)
        return {"ready_seconds": round(ready, 1), "cpu_seconds_to_ready": round(ready_cpu, 1),
                "rss_mb": round(rss / 2**20, 1), "rss_mb_after_steady": round(final / 2**20, 1),
                "rss_mb_peak": round(max(peak, final) / 2**20, 1), "steady_cpu_cores": round(steady_cpu, 3),
                "rss": rss, "log_errors": text.count("[ERROR"), "rss_mb_timeline": timeline}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if os.environ.get("FEDTASK_SCALE_LOGS"):  # keep the operator's log past the temporary directory
            keep = Path(os.environ["FEDTASK_SCALE_LOGS"])
            keep.mkdir(parents=True, exist_ok=True)
            (keep / log_path.name).write_bytes(log_path.read_bytes())


def _committed_crd() -> bytes:
    import subprocess

    result = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:crds/federatedtask.yaml"], capture_output=True)
    return result.stdout if result.returncode == 0 else (ROOT / "crds" / "federatedtask.yaml").read_bytes()


def _kubectl(env: dict, *args: str) -> str:
    import subprocess

    result = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()[:2000]}")
    return result.stdout.strip()


def real_measure(pods: int, tasks: int, tree: str, steady_seconds: float, create_seconds: float = 0.0) -> dict:
    import kubernetes

    from tests.support.cluster import LOCK_SECONDS, machine_lock, read_env, run_script

    report: dict = {"api": "real kube-apiserver (hack/local-cluster.sh)", "real_pods": pods, "real_tasks": tasks,
                    "operator_tree": tree or "this tree"}
    with tempfile.TemporaryDirectory(prefix="fedtask-scale-real-") as tmp, machine_lock(LOCK_SECONDS):
        directory = Path(tmp) / "cluster"
        run_script("up", "--dir", str(directory), timeout=900)
        try:
            env = read_env(directory / "env")
            client = kubernetes.config.new_client_from_config(config_file=env["KUBECONFIG"])
            client.configuration.connection_pool_maxsize = 32
            core = kubernetes.client.CoreV1Api(client)
            core.create_namespace({"metadata": {"name": "bench-tasks"}})
            for n in range(REAL_NAMESPACES):
                core.create_namespace({"metadata": {"name": f"bench-{n}"}})
            crd = Path(tmp) / "crd.yaml"  # the committed CRD (the tree's copy may be mid-regeneration)
            crd.write_bytes(_committed_crd())
            _kubectl(env, "create", "-f", str(crd))
            deadline = time.monotonic() + 120
            while not any(c.get("type") == "Established" and c.get("status") == "True" for c in json.loads(
                    _kubectl(env, "get", "crd", "federatedtasks.fedtask.io", "-o", "json")).get("status", {}).get(
                    "conditions") or ()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the FederatedTask CRD was not established within 120 s")
                time.sleep(1)
            for n in range(REAL_NODES):
                core.create_node({"metadata": {"name": f"bench-node-{n:03d}", "labels": {"bench": "fake"}},
                                  "status": {"capacity": {"cpu": "64", "memory": "256Gi", "pods": "2000"},
                                             "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "2000"}}})
            seconds, _ = _create_all(client, lambda i: (
                "/apis/fedtask.io/v1alpha1/namespaces/bench-tasks/federatedtasks", _real_task(i)), tasks)
            report["create_tasks_seconds"] = round(seconds, 1)
            print(f"partial: {json.dumps(report)}", file=sys.stderr, flush=True)
            # the tasks alone: a first start creates their server pods (a one-off, not the baseline), a second one
            # is the baseline, then the same cluster with the pods
            report["operator_tasks_first_start"] = real_operator(env, Path(tmp), "tasks-first", 0, tree,
                                                                 steady_seconds)
            report["operator_tasks_first_start"].pop("rss")
            report["operator_tasks_only"] = real_operator(env, Path(tmp), "tasks", 0, tree, steady_seconds)
            print(f"partial: {json.dumps(report)}", file=sys.stderr, flush=True)
            # the default service account exists before pods need it (the controller creates it)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(
                    not core.list_namespaced_service_account(f"bench-{n}").items for n in range(REAL_NAMESPACES)):
                time.sleep(1)
            stop_at = time.monotonic() + create_seconds if create_seconds else None
            seconds, created = _create_all(client, lambda i: (
                f"/api/v1/namespaces/bench-{i % REAL_NAMESPACES}/pods", _real_pod(i)), pods, stop_at=stop_at)
            report.update(create_pods_seconds=round(seconds, 1), foreign_pods_created=created,
                          create_pods_per_second=round(created / max(seconds, 1e-9), 1))
            print(f"partial: {json.dumps(report)}", file=sys.stderr, flush=True)
            # the same cluster, the operator watching only the tasks' namespace (before 224c596 it then held no
            # foreign pod; since, its pod watch summarizes every pod too), then cluster-wide
            report["operator_namespaced"] = real_operator(env, Path(tmp), "namespaced", created, tree, steady_seconds,
                                                          namespaces=("bench-tasks",))
            print(f"partial: {json.dumps(report)}", file=sys.stderr, flush=True)
            report["operator_with_pods"] = real_operator(env, Path(tmp), "pods", created, tree, steady_seconds)
            base, full = report["operator_tasks_only"].pop("rss"), report["operator_with_pods"].pop("rss")
            namespaced = report["operator_namespaced"].pop("rss")
            report["bytes_per_foreign_pod"] = round((full - base) / max(created, 1))
            report["bytes_per_foreign_pod_vs_namespaced"] = round((full - namespaced) / max(created, 1))
        finally:
            run_script("down", "--dir", str(directory), timeout=300)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foreign-pods", default="2000,20000", help="foreign pod counts for the operator "
                        "(comma-separated, default 2000,20000; the in-process index measure uses the largest)")
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-process", action="store_true", help="skip the operator process measure")
    parser.add_argument("--operator-tree", default="", metavar="DIR",
                        help="run the operator process from this source tree (e.g. `git archive` of an older commit)")
    parser.add_argument("--compare-tree", default="", metavar="DIR",
                        help="also run the operator from this source tree at the same sizes: the peer, as ratios")
    parser.add_argument("--compare-pods", default="", metavar="N,N",
                        help="the peer's foreign pod counts (default: --foreign-pods; kopf indexed 20,000 pods at "
                             "~5 per second, so the peer is measured smaller)")
    parser.add_argument("--real", action="store_true", help="measure on the real control plane instead of kmock")
    parser.add_argument("--real-pods", type=int, default=100000)
    parser.add_argument("--real-tasks", type=int, default=1000)
    parser.add_argument("--real-create-seconds", type=float, default=0.0, metavar="S",
                        help="stop creating foreign pods after S seconds and measure with those created (0: all)")
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(size) for size in args.foreign_pods.split(",") if size.strip()})
        peer_sizes = sorted({int(size) for size in args.compare_pods.split(",") if size.strip()}) or sizes
    except ValueError:
        parser.error(f"--foreign-pods and --compare-pods take comma-separated counts, not {args.foreign_pods!r} / "
                     f"{args.compare_pods!r}")
    if not sizes or sizes[0] < 1000 or args.nodes < 1 or args.tasks < 1:
        parser.error("--foreign-pods must be at least 1000, --nodes and --tasks at least 1")
    for tree in (args.operator_tree, args.compare_tree):
        if tree and not (Path(tree) / "operator" / "fedtask_operator").is_dir():
            parser.error(f"{tree} has no operator/fedtask_operator: give the root of a fedtask source tree")

    report: dict = {"benchmark": "scale", "foreign_pods": sizes}
    if args.real:
        report.update(real_measure(args.real_pods, args.real_tasks, args.operator_tree, args.steady_seconds,
                                   args.real_create_seconds))
        if args.compare_tree:
            peer = real_measure(args.real_pods, args.real_tasks, args.compare_tree, args.steady_seconds,
                                    args.real_create_seconds)
            report["peer"] = peer
            report["bytes_per_foreign_pod_ratio_vs_peer"] = round(
                report["bytes_per_foreign_pod"] / max(peer["bytes_per_foreign_pod"], 1), 4)
        report["target_bytes_per_pod"] = TARGET_BYTES_PER_POD
        report["meets_rss_target"] = report["bytes_per_foreign_pod"] <= TARGET_BYTES_PER_POD
        print(json.dumps(report))
        return 0

    # 1. the index, in process
    old = retained_bytes(old_index_value, sizes[-1])
    new = retained_bytes(pod_index.summarize, sizes[-1])
    report.update(index_bytes_per_pod_old=round(old), index_bytes_per_pod=round(new),
                  index_ratio_vs_old=round(new / old, 3))

    # 2. the operator process
    if not args.no_process:
        measured = process_measure(sizes, args.operator_tree)
        report.update(operator=measured, api="kmock emulator", operator_tree=args.operator_tree or "this tree",
                      operator_rss_bytes_per_foreign_pod=measured["bytes_per_foreign_pod"],
                      operator_rss_slope_bytes_per_foreign_pod=measured["slope_bytes_per_foreign_pod"],
                      target_bytes_per_pod=TARGET_BYTES_PER_POD,
                      meets_rss_target=measured["slope_bytes_per_foreign_pod"] <= TARGET_BYTES_PER_POD)
        if args.compare_tree:
            peer = process_measure(peer_sizes, args.compare_tree)
            report.update(peer=peer, peer_tree=args.compare_tree,
                          slope_ratio_vs_peer=round(measured["slope_bytes_per_foreign_pod"]
                                                    / max(peer["slope_bytes_per_foreign_pod"], 1), 4))

    # 3. the scheduling pass
    nodes, pods = make_fleet(args.nodes, seed=1, pools=POOLS)
    requests = make_requests(args.tasks)
    summaries = pod_index.summarize_all(pods)
    select_devices(requests, nodes, pods)  # warm-up
    full_pass = best_of(args.repeat, lambda: select_devices(requests, nodes, pods))
    operator_pass = best_of(args.repeat, lambda: select_devices(requests, nodes, list(pod_index.PodsView(summaries))))
    report.update(nodes=args.nodes, tasks=args.tasks, pods_in_pass=len(pods),
                  pass_seconds_full_pods=round(full_pass, 4), pass_seconds_operator=round(operator_pass, 4),
                  pass_ratio_operator_vs_full=round(operator_pass / full_pass, 3),
                  target_pass_seconds=TARGET_PASS_SECONDS, meets_pass_target=operator_pass <= TARGET_PASS_SECONDS)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
