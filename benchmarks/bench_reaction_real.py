"""Reaction latency of the operator on the real control plane (hack/local-cluster.sh: kube-apiserver, kube-scheduler,
kube-controller-manager, node agents; the chart's operator pod), beside the same measure on the kmock emulator
(benchmarks/bench_reaction.py, run in the same invocation).

Measured from one watch on the pods of the task (the arrival time of each pod version at this process; both ends
of a sample come through the same watch, so its delivery delay mostly cancels):
- aggregate: the last train pod of a round seen Succeeded -> the round's aggregate pod seen created;
- next_round: the adjust pod seen Succeeded -> the next round's first train pod seen created.
Needs root and the built cluster tools (hack/install-cluster-tools.sh); takes the tests' machine-wide lock.
Prints one JSON line.  Usage: python benchmarks/bench_reaction_real.py [--rounds 12] [--no-kmock]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import (  # noqa: E402
    LocalCluster,
    PodRecorder,
    digits_task,
    machine_lock,
    read_env,
    run_script,
    wait_for_phase,
)


class TimedRecorder(PodRecorder):
    """When each pod was first seen (created) and first seen Succeeded, by this process's monotonic clock."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.created: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}

    def _record(self, pod: dict) -> None:
        now = time.monotonic()
        name = pod["metadata"]["name"]
        self.created.setdefault(name, now)
        if (pod.get("status") or {}).get("phase") == "Succeeded":
            self.succeeded.setdefault(name, now)
        super()._record(pod)


def latencies(recorder: TimedRecorder, task: str, rounds: int) -> tuple[list[float], list[float]]:
    aggregate, next_round = [], []
    for r in range(1, rounds + 1):
        tag = f"{task}-r{r:04d}"
        trained = [t for n, t in recorder.succeeded.items() if n.startswith(tag + "-train-")]
        created = recorder.created.get(f"{tag}-aggregate")
        if trained and created is not None:
            aggregate.append(created - max(trained))
        adjusted = recorder.succeeded.get(f"{tag}-adjust")
        following = [t for n, t in recorder.created.items() if n.startswith(f"{task}-r{r + 1:04d}-train-")]
        if adjusted is not None and following:
            next_round.append(min(following) - adjusted)
    return aggregate, next_round


def summary(values: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values) * 1000, 1), "max_ms": round(max(values) * 1000, 1),
            "samples": len(values)}


def measure_real(rounds: int) -> dict:
    name = "bench-reaction"
    with tempfile.TemporaryDirectory() as tmp, machine_lock(timeout=900):
        directory = Path(tmp) / "cluster"
        try:
            run_script("up", "--dir", str(directory), timeout=900)
            run_script("install", "--dir", str(directory), timeout=600)
            cluster = LocalCluster(dir=directory, env=read_env(directory / "env"))
            manifest = digits_task(name, rounds, {"count": 3, "perRound": 3,
                                                  "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}})
            with TimedRecorder(cluster, name) as recorder:
                cluster.kubectl("apply", "-f", "-", input=manifest)
                task = wait_for_phase(cluster, name, timeout=60 + 30 * rounds)
            if task["status"]["phase"] != "Succeeded" or recorder.errors:
                raise RuntimeError(f"{task['status']} {recorder.errors}")
        finally:
            run_script("down", "--dir", str(directory), timeout=120)
    aggregate, next_round = latencies(recorder, name, rounds)
    both = aggregate + next_round
    return {**summary(both), "aggregate": summary(aggregate), "next_round": summary(next_round)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12, help="aggregate samples = rounds, next_round = rounds - 1")
    parser.add_argument("--no-kmock", action="store_true", help="skip the emulator side")
    args = parser.parse_args()
    result = {"benchmark": "reaction_latency_real", "rounds": args.rounds, "real": measure_real(args.rounds)}
    if not args.no_kmock:
        kmock = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_reaction.py"),
                                "--rounds", str(args.rounds)], capture_output=True, text=True, check=True)
        emulated = json.loads(kmock.stdout.strip().splitlines()[-1])
        result["kmock"] = {key: emulated[key] for key in ("median_ms", "max_ms", "samples", "aggregate_median_ms",
                                                          "next_round_median_ms")}
    result["target_ms"] = 200
    result["meets_target"] = result["real"]["median_ms"] <= 200
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
