"""examples/digits-quick.yaml end to end on the real control plane (the chart's operator as a pod, kube-scheduler,
node agents, the chart's MinIO; `kubectl apply` -> the task seen Succeeded) beside the same manifest under
`fedtask run` (a fresh process, pods as processes, a folder as the store), in the same invocation.

`ratio` = cluster seconds / fedtask run seconds. Needs root and the built cluster tools; takes the cluster tests'
machine-wide lock. Cluster up/install time is not counted (bench_cluster_up.py measures it).
Prints one JSON line.  Usage: python benchmarks/bench_cluster_digits.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_cluster_up import local_cluster  # noqa: E402
from fedtask_operator.core.phases import FINISHED_PHASES  # noqa: E402
from tests.support.cluster import NAMESPACE  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

MANIFEST = ROOT / "examples" / "digits-quick.yaml"


def fedtask_run(workdir: Path) -> tuple[float, dict]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "run", str(MANIFEST), "--workdir",
                             str(workdir)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"fedtask run failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    name = yaml.safe_load(MANIFEST.read_text())["metadata"]["name"]
    return seconds, json.loads((workdir / name / "federatedtask.json").read_text())


def on_cluster() -> tuple[float, dict]:
    task = yaml.safe_load(MANIFEST.read_text())
    task["metadata"]["namespace"] = NAMESPACE
    name = task["metadata"]["name"]
    with local_cluster() as cluster:
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(task))

        def finished() -> dict | None:
            status = cluster.get_json("federatedtask", name, "-n", NAMESPACE).get("status") or {}
            return status if status.get("phase") in FINISHED_PHASES else None

        try:
            status = wait_for(finished, timeout=1800, interval=0.25, message=f"{name} to finish")
        except AssertionError as timed_out:
            raise SystemExit(str(timed_out)) from None
        return time.monotonic() - started, {"status": status}


def summary(seconds: float, task: dict) -> dict:
    status = task["status"]
    return {"seconds": round(seconds, 1), "phase": status.get("phase"), "rounds": len(status.get("history") or []),
            "accuracy": (status.get("model") or {}).get("accuracy")}


def main() -> int:
    with tempfile.TemporaryDirectory() as workdir:
        local = summary(*fedtask_run(Path(workdir)))
    cluster = summary(*on_cluster())
    print(json.dumps({"benchmark": "cluster_digits_quick", "cluster": cluster, "fedtask_run": local,
                      "ratio": round(cluster["seconds"] / local["seconds"], 2)}))
    return 0 if cluster["phase"] == local["phase"] == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
