"""Scale: what foreign pods (pods fedtask did not create) cost the operator, and a scheduling pass at 10k nodes x 100
tasks. Prints one JSON line.

1. Index bytes per foreign pod, in process (tracemalloc): the pod index as it was (each pod's metadata, affinity and
   containers deep-copied) against kube/pod_index.py's summaries, for the same realistic pods (a dozen env vars,
   mounts, probes, two containers). Peer: the old index, as a ratio.
2. The real operator process (`fedtask operator` against the API emulator, kmock), started with 0 (the peer) and
   with N foreign pods in the cluster: its RSS once it has listed and indexed them (a fedtask-labelled marker pod,
   listed last, reaches its handler) and settled; growth per foreign pod. Target <= 1 KB. The real API server on
   this 2-core machine would need N pods stored in etcd through admission; the emulator lists the same objects.
3. One learning period's device selection at 10,000 nodes x 100 tasks (benchmarks/bench_sched_speed.py's fleet and
   requests) from the full pod dicts, and as the operator runs it: from the summaries, expanded per pass. Target
   <= 200 ms.

    python benchmarks/scale.py [--foreign-pods 20000] [--nodes 10000] [--tasks 100] [--no-process]
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
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


MARKER = "zz-marker"  # a fedtask-labelled pod stored after the foreign ones: its handler runs once they are indexed


def operator_rss(count: int, workdir: Path, tree: str = "") -> tuple[int, float]:
    """(settled RSS of `fedtask operator` started with `count` foreign pods in the emulator, seconds to settle)."""
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
        operator = OperatorProcess(cluster, s3, workdir / f"operator-{count}.log", "--standalone", "--verbose")
        if tree:  # the operator from another source tree (an older commit, for a before/after)
            operator.env["PYTHONPATH"] = os.pathsep.join(str(Path(tree) / p) for p in ("operator", "worker_image"))
        with operator:
            started = time.monotonic()
            while "Handler 'pod_changed'" not in operator.log():  # every pod listed and indexed
                if time.monotonic() - started > 900 or operator.process.poll() is not None:
                    raise RuntimeError(f"the operator did not index the pods:\n{operator.log()[-3000:]}")
                time.sleep(0.5)
            rss = settled_rss(operator.process.pid)
            return rss, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foreign-pods", type=int, default=20000, help="foreign pods for the operator (default "
                        "20000; the in-process index measure uses the same count)")
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-process", action="store_true", help="skip the operator process measure")
    parser.add_argument("--operator-tree", default="", metavar="DIR",
                        help="run the operator process from this source tree (e.g. `git archive` of an older commit)")
    args = parser.parse_args(argv)
    if args.foreign_pods < 1000 or args.nodes < 1 or args.tasks < 1:
        parser.error("--foreign-pods must be at least 1000, --nodes and --tasks at least 1")

    report: dict = {"benchmark": "scale", "foreign_pods": args.foreign_pods}
    # 1. the index, in process
    old = retained_bytes(old_index_value, args.foreign_pods)
    new = retained_bytes(pod_index.summarize, args.foreign_pods)
    report.update(index_bytes_per_pod_old=round(old), index_bytes_per_pod=round(new),
                  index_ratio_vs_old=round(new / old, 3))

    # 2. the operator process
    if not args.no_process:
        with tempfile.TemporaryDirectory(prefix="fedtask-scale-") as tmp:
            empty, empty_seconds = operator_rss(0, Path(tmp), args.operator_tree)
            full, full_seconds = operator_rss(args.foreign_pods, Path(tmp), args.operator_tree)
        per_pod = (full - empty) / args.foreign_pods
        report.update(operator_rss_mb_without_foreign_pods=round(empty / 2**20, 1),
                      operator_rss_mb_with_foreign_pods=round(full / 2**20, 1),
                      operator_rss_bytes_per_foreign_pod=round(per_pod), target_bytes_per_pod=TARGET_BYTES_PER_POD,
                      meets_rss_target=per_pod <= TARGET_BYTES_PER_POD,
                      operator_settle_seconds=[round(empty_seconds, 1), round(full_seconds, 1)],
                      api="kmock emulator", operator_tree=args.operator_tree or "this tree")

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
