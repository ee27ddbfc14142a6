"""Peak memory of the `aggregate` stage under hostile input and at scale (issue 12's figures).

Runs `python -m fedtask_worker aggregate --base GLOBAL --on-invalid skip ...` as a whole process, as the aggregate pod
does, on local files. Peak RSS is the process's own VmHWM (/proc/self/status), read as it exits: wait4's ru_maxrss
is no measure here, Linux carries the parent's RSS at fork into the child's maxrss across exec (a 10 MB child of a
300 MB parent reports 300 MB). The runs:
- `baseline`: 2 valid updates of a `--params` float32 model;
- `hostile_header`: the same 2 plus one update whose header claims (and really has) `--header-mb` MB of `[`;
- `many`: `--count` valid updates of the same model (the header bound, the downloads and the reduction must keep
  memory independent of the count: not count x model).
Every run must exit 0 (the hostile update rejected, the others combined).

Prints one JSON line. Usage: python benchmarks/bench_hostile_aggregate.py [--params 100000] [--count 1000]
[--header-mb 100]
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_updates(folder: str, params: int, count: int) -> tuple[str, list[str]]:
    from fedtask_worker.tensors import save_arrays

    rng = np.random.default_rng(0)
    sizes = {"layer0.weight": params // 2, "layer1.weight": params - params // 2}

    def model() -> dict[str, np.ndarray]:
        return {name: rng.standard_normal(size, dtype=np.float32) for name, size in sizes.items()}

    base = os.path.join(folder, "global.safetensors")
    save_arrays(base, model(), {"round": "0"})
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"d{index:05d}.safetensors")
        save_arrays(path, model(), {"num_samples": str(int(rng.integers(50, 500))), "round": "1"})
        paths.append(path)
    return base, paths


def write_hostile_header(path: str, megabytes: int) -> None:
    size = megabytes * 1024 * 1024
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", size))
        stream.write(b"[" * size)


# `python -m fedtask_worker ARGS`, reporting the process's own peak RSS on stderr as it exits.
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
def report():
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write("peak-rss-kb " + peak.split()[1] + "\\n")
atexit.register(report)
sys.argv[0] = "fedtask_worker"
runpy.run_module("fedtask_worker", run_name="__main__", alter_sys=True)
"""


def run_worker(argv: list[str]) -> tuple[int, float, int, str, str]:
    """(exit code, wall seconds, own peak RSS bytes, stdout, stderr) of `python -m fedtask_worker ARGV`."""
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = process.stderr.strip().splitlines()
    if not lines or not lines[-1].startswith("peak-rss-kb "):
        raise RuntimeError(f"no peak RSS report: {process.stderr.strip()[-500:]}")
    return (process.returncode, seconds, int(lines[-1].split()[1]) * 1024, process.stdout,
            "\n".join(lines[:-1]))


def run(argv: list[str]) -> tuple[float, int, dict]:
    """(wall seconds, peak RSS bytes, result JSON) of one aggregate process; it must exit 0."""
    code, seconds, peak, stdout, stderr = run_worker(argv)
    if code != 0:
        raise RuntimeError(f"aggregate failed: {stderr.strip()[-500:]}")
    return seconds, peak, json.loads(stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--header-mb", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as folder:
        base, paths = write_updates(folder, args.params, args.count)
        hostile = os.path.join(folder, "d99999.safetensors")
        write_hostile_header(hostile, args.header_mb)
        model_bytes = os.path.getsize(base)

        def aggregate(name: str, updates: list[str]) -> tuple[float, int, dict]:
            return run(["aggregate", "--base", base, "--on-invalid", "skip", "--round", "1",
                        "--output", os.path.join(folder, f"{name}.out"), *updates])

        baseline = aggregate("baseline", paths[:2])
        attacked = aggregate("hostile", paths[:2] + [hostile])
        many = aggregate("many", paths)
    if [item["uri"] for item in attacked[2]["rejected"]] != [hostile] or attacked[2]["updates"] != 2:
        raise RuntimeError(f"the hostile update was not rejected alone: {attacked[2]}")
    if many[2]["updates"] != args.count or many[2]["rejected"]:
        raise RuntimeError(f"valid updates were rejected: {many[2]['rejected'][:3]}")
    mb = 2 ** 20
    result = {
        "benchmark": "hostile_aggregate", "params": args.params, "model_mb": round(model_bytes / mb, 2),
        "count": args.count, "header_mb": args.header_mb,
        "baseline_peak_rss_mb": round(baseline[1] / mb, 1),
        "hostile_header_peak_rss_mb": round(attacked[1] / mb, 1),
        "hostile_header_rss_over_baseline_mb": round((attacked[1] - baseline[1]) / mb, 1),
        "hostile_rejected_reason": attacked[2]["rejected"][0]["reason"],
        "many_peak_rss_mb": round(many[1] / mb, 1),
        "many_rss_over_baseline_mb": round((many[1] - baseline[1]) / mb, 1),
        "many_count_x_model_mb": round(args.count * model_bytes / mb, 1),
        "many_seconds": round(many[0], 3), "baseline_seconds": round(baseline[0], 3),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
