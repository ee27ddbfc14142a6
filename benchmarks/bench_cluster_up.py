"""What the real control plane costs: `hack/install-cluster-tools.sh` (warm: every binary already built; `--cold`:
also a build into an empty tools folder with an empty Go build cache, which takes many minutes), then
`hack/local-cluster.sh up`, `install` (the chart) and `down` in a temporary folder, in seconds.

Ratios compare within the run: up and install against the warm tool check, cold against warm.
Needs root and the built cluster tools; takes the cluster tests' machine-wide lock.
Prints one JSON line.  Usage: python benchmarks/bench_cluster_up.py [--cold] [--warm-repeats 5]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import LocalCluster, machine_lock, read_env, run_script  # noqa: E402

INSTALL_TOOLS = ROOT / "hack" / "install-cluster-tools.sh"


def install_tools_seconds(env: dict | None = None, timeout: float = 600) -> float:
    started = time.monotonic()
    result = subprocess.run([str(INSTALL_TOOLS)], capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"install-cluster-tools.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.monotonic() - started


@contextlib.contextmanager
def local_cluster(install: bool = True, timings: dict | None = None) -> Iterator[LocalCluster]:
    """`up` (and `install` unless told not to) in a temporary folder; `down` at the end. The seconds of each step go
    into `timings`. With `install`, under the tests' machine-wide lock (the chart's MinIO pod takes the machine's
    :9000); without, every port is a free one and no lock is needed."""
    timings = {} if timings is None else timings
    lock = machine_lock(timeout=1800) if install else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, lock:
        directory = Path(tmp) / "cluster"
        try:
            timings["up_s"] = run_script("up", "--dir", str(directory), timeout=900)
            if install:
                timings["install_s"] = run_script("install", "--dir", str(directory), timeout=600)
            yield LocalCluster(dir=directory, env=read_env(directory / "env"), timings=timings)
        finally:
            timings["down_s"] = run_script("down", "--dir", str(directory), timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true",
                        help="also build every tool into an empty folder with an empty Go build cache (many minutes)")
    parser.add_argument("--warm-repeats", type=int, default=5)
    args = parser.parse_args()
    warm = [install_tools_seconds() for _ in range(args.warm_repeats)]
    result: dict = {"benchmark": "cluster_up", "tools_warm_s": round(statistics.median(warm), 4)}
    if args.cold:
        with tempfile.TemporaryDirectory() as tools, tempfile.TemporaryDirectory() as gocache:
            env = dict(os.environ, FEDTASK_CLUSTER_TOOLS=tools, GOCACHE=gocache)
            result["tools_cold_s"] = round(install_tools_seconds(env, timeout=7200), 1)
        result["cold_vs_warm"] = round(result["tools_cold_s"] / result["tools_warm_s"], 1)
    timings: dict = {}
    with local_cluster(timings=timings):
        pass
    result.update({key: round(value, 2) for key, value in timings.items()})
    result["up_vs_tools_warm"] = round(timings["up_s"] / result["tools_warm_s"], 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
