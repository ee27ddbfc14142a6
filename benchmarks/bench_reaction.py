"""Reaction latency of the operator against the kmock API emulator (real kopf, real worker pods via the fork server).

Measured from the emulator's own timeline (arrival times of API calls):
- aggregate: the last train pod of a round patched to Succeeded -> the round's aggregate pod created;
- next_round: the adjust pod patched to Succeeded -> the next round's first train pod created.
Peer, in the same run: a bare kopf operator whose pod event handler creates a pod at once (kopf's own reaction floor,
with kopf's default settings: kopf 1.45 no longer batches events, so the former 100 ms batch window is gone).
Prints one JSON line.  Usage: python benchmarks/bench_reaction.py [--rounds 6]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.kube import PODS, EmulatedCluster, make_node  # noqa: E402
from tests.support.kubelet import ApiKubelet  # noqa: E402
from tests.support.operator import OperatorProcess, task_status  # noqa: E402
from tests.support.s3 import run_s3_server  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

PEER_OPERATOR = textwrap.dedent("""
    import kopf

    @kopf.on.event("pods", labels={"bench": "peer"})
    def react(body, namespace, name, **_):
        if (body.get("status") or {}).get("phase") == "Succeeded" and not name.endswith("-next"):
            import kubernetes
            kubernetes.config.load_kube_config()
            api = kubernetes.client.CoreV1Api()
            api.create_namespaced_pod(namespace, {"apiVersion": "v1", "kind": "Pod",
                                                  "metadata": {"name": name + "-next"},
                                                  "spec": {"containers": [{"name": "main", "image": "none"}]}},
                                      _preload_content=False)
""")


def pod_times(timeline, action, name_test, phase=None):
    return [(t, name) for t, act, plural, name, ph in timeline
            if plural == "pods" and act == action and name and name_test(name) and (phase is None or ph == phase)]


def operator_latencies(timeline, task: str, rounds: int) -> tuple[list[float], list[float]]:
    aggregate, next_round = [], []
    for r in range(1, rounds + 1):
        tag = f"{task}-r{r:04d}"
        trained = pod_times(timeline, "update", lambda n: n.startswith(tag + "-train-"), "Succeeded")
        created = pod_times(timeline, "create", lambda n: n == f"{tag}-aggregate")
        if trained and created:
            aggregate.append(created[0][0] - max(t for t, _ in trained))
        adjusted = pod_times(timeline, "update", lambda n: n == f"{tag}-adjust", "Succeeded")
        following = pod_times(timeline, "create", lambda n: n.startswith(f"{task}-r{r + 1:04d}-train-"))
        if adjusted and following:
            next_round.append(following[0][0] - adjusted[0][0])
    return aggregate, next_round


def measure_peer(cluster: EmulatedCluster, workdir: pathlib.Path, samples: int) -> list[float]:
    script = workdir / "peer.py"
    script.write_text(PEER_OPERATOR)
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    process = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-n", "default", str(script)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        latencies = []
        for i in range(samples):
            name = f"peer-{i}"
            cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "peer"}},
                           "spec": {"containers": [{"name": "main", "image": "none"}]}})
            time.sleep(0.1)
            cluster.patch(PODS, "default", name, {"status": {"phase": "Succeeded"}}, subresource="status")
            wait_for(lambda: cluster.get(PODS, "default", name + "-next"), timeout=20)
            timeline = cluster.emulator.timeline
            done = pod_times(timeline, "update", lambda n: n == name, "Succeeded")
            created = pod_times(timeline, "create", lambda n: n == name + "-next")
            latencies.append(created[0][0] - done[0][0])
        return latencies
    finally:
        process.terminate()
        process.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    from fedtask_operator.local.forkserver import ForkServer

    with tempfile.TemporaryDirectory() as tmp, run_s3_server() as s3:
        workdir = pathlib.Path(tmp)
        os.environ.update(s3.env)
        s3.client().make_bucket("fedtask")
        fork_server = ForkServer(preload_datasets=["digits"]).start()
        try:
            with EmulatedCluster(workdir / "cluster") as cluster:
                peer = measure_peer(cluster, workdir, samples=10)
                for node in ("node-a", "node-b"):
                    cluster.apply(make_node(node, labels={"fedtask.io/device": "true"}))
                env = dict(os.environ, OMP_NUM_THREADS="1")
                with ApiKubelet(cluster, workdir / "kubelet", base_env=env, launcher=fork_server), \
                        OperatorProcess(cluster, s3, workdir / "operator.log", "--standalone"):
                    cluster.apply({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                                   "metadata": {"name": "bench", "namespace": "default"},
                                   "spec": {"model": {"name": "mlp", "args": {"hidden": 16}},
                                            "data": {"dataset": "digits", "shared": {"fraction": 0.05}},
                                            "devices": {"count": 2, "perRound": 2},
                                            "rounds": {"max": args.rounds}}})
                    wait_for(lambda: task_status(cluster, "bench").get("phase") in ("Succeeded", "Failed"),
                             timeout=60 + 30 * args.rounds)
                aggregate, next_round = operator_latencies(cluster.emulator.timeline, "bench", args.rounds)
        finally:
            fork_server.stop()
    ours = aggregate + next_round
    result = {
        "benchmark": "reaction_latency", "rounds": args.rounds,
        "aggregate_median_ms": round(statistics.median(aggregate) * 1000, 1),
        "next_round_median_ms": round(statistics.median(next_round) * 1000, 1),
        "median_ms": round(statistics.median(ours) * 1000, 1),
        "max_ms": round(max(ours) * 1000, 1), "samples": len(ours),
        "peer": "bare kopf pod-event handler creating a pod (kopf 1.45 defaults)",
        "peer_median_ms": round(statistics.median(peer) * 1000, 1),
        "ratio_vs_peer": round(statistics.median(ours) / statistics.median(peer), 2),
        "target_ms": 200, "meets_target": statistics.median(ours) <= 0.2,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
