"""The `aggregate` stage as a whole process vs Flower doing the same job with safetensors files.

Both get N updates of a `--params` float32 model as safetensors files in a local folder (in the page cache).
Ours: `python -m fedtask_worker aggregate --output OUT FILE...`, wall time of the whole process (interpreter start,
imports, validation, aggregation, write). Flower: a process that imports flwr and safetensors first (not counted),
then loads the files with `safetensors.numpy.load_file`, calls `flwr.server.strategy.aggregate.aggregate` and saves
with `safetensors.numpy.save_file` (counted). Peak RSS of each process is its own VmHWM (/proc/self/status) read as
it exits; wait4's ru_maxrss would include this parent's RSS carried over fork+exec. Ours is also run with N=2 and N/2:
its peak RSS rises a little up to about 10 updates (per-thread scratch blocks sized by N) and is flat after that, so
`rss_growth_half_to_n_models` (from N/2 to N updates, in model sizes) shows that memory does not grow with N.

Prints one JSON line. Usage: python benchmarks/bench_aggregate_process.py [--params 10000000] [--count 20]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

FLOWER_SCRIPT = r"""
import json, sys, time
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from flwr.server.strategy.aggregate import aggregate
output, paths = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
results = []
for path in paths:
    arrays = load_file(path)
    with safe_open(path, "np") as handle:
        samples = int(handle.metadata()["num_samples"])
    names = sorted(arrays)
    results.append(([arrays[name] for name in names], samples))
averaged = aggregate(results)
save_file(dict(zip(names, averaged)), output)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def write_updates(folder: str, params: int, count: int, layers: int = 4) -> list[str]:
    from fedtask_worker.tensors import save_arrays

    rng = np.random.default_rng(0)
    sizes = [params // layers] * (layers - 1) + [params - (params // layers) * (layers - 1)]
    paths = []
    for index in range(count):
        arrays = {f"layer{i}": rng.standard_normal(size, dtype=np.float32) for i, size in enumerate(sizes)}
        path = os.path.join(folder, f"update-{index:04d}.safetensors")
        save_arrays(path, arrays, {"num_samples": str(int(rng.integers(50, 500))), "round": "1"})
        paths.append(path)
    return paths


# Runs `python -m MODULE ARGS` or `python -c CODE ARGS` (argv: "-m"/"-c", target, args...) and reports the process's
# own peak RSS on stderr's last line as it exits.
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
def report():
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write("\\npeak-rss-kb " + peak.split()[1] + "\\n")
atexit.register(report)
kind, target, arguments = sys.argv[1], sys.argv[2], sys.argv[3:]
if kind == "-m":
    sys.argv = [target, *arguments]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *arguments]
    exec(compile(target, "<benchmark>", "exec"), {"__name__": "__main__"})
"""


def run_process(kind: str, target: str, arguments: list[str]) -> tuple[float, int, str]:
    """(wall seconds, own peak RSS bytes, stdout) of `python KIND TARGET ARGUMENTS` (KIND is -m or -c)."""
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, kind, target, *arguments],
                             capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = process.stderr.strip().splitlines()
    if process.returncode != 0 or not lines or not lines[-1].startswith("peak-rss-kb "):
        raise RuntimeError(f"python {kind} {target[:40]!r} failed: {process.stderr.strip()[-500:]}")
    return seconds, int(lines[-1].split()[1]) * 1024, process.stdout


def best(runs: list[tuple[float, int, str]]) -> tuple[float, int]:
    return min(run[0] for run in runs), max(run[1] for run in runs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model_bytes = args.params * 4
    with tempfile.TemporaryDirectory(prefix="bench-aggregate-") as folder:
        paths = write_updates(folder, args.params, args.count)
        output = os.path.join(folder, "out.safetensors")
        ours_runs = [run_process("-m", "fedtask_worker", ["aggregate", "--output", output, *paths])
                     for _ in range(args.repeats)]
        two_output = os.path.join(folder, "out-n2.safetensors")
        two_runs = [run_process("-m", "fedtask_worker", ["aggregate", "--output", two_output, *paths[:2]])
                    for _ in range(args.repeats)]
        half_runs = [run_process("-m", "fedtask_worker", ["aggregate", "--output", two_output,
                                                          *paths[:max(2, args.count // 2)]])
                     for _ in range(args.repeats)]
        flower_runs = [run_process("-c", FLOWER_SCRIPT, [output + ".flwr", *paths])
                       for _ in range(max(1, args.repeats - 1))]
        ours_seconds, ours_rss = best(ours_runs)
        _, two_rss = best(two_runs)
        _, half_rss = best(half_runs)
        flower_seconds = min(json.loads(run[2])["seconds"] for run in flower_runs)
        flower_rss = max(run[1] for run in flower_runs)
        from fedtask_worker.tensors import load_arrays

        mine, _ = load_arrays(output)
        theirs, _ = load_arrays(output + ".flwr")
        difference = max(float(np.max(np.abs(mine[k] - theirs[k]))) for k in mine)
    result = {
        "benchmark": "aggregate_process", "peer": "flwr aggregate + safetensors load/save (imports not counted)",
        "params": args.params, "count": args.count,
        "ours_seconds": round(ours_seconds, 3), "flower_seconds": round(flower_seconds, 3),
        "ours_vs_flower": round(ours_seconds / flower_seconds, 3),
        "ours_peak_rss_mb": round(ours_rss / 2**20, 1), "ours_peak_rss_mb_n2": round(two_rss / 2**20, 1),
        "ours_peak_rss_mb_half": round(half_rss / 2**20, 1),
        "rss_growth_n2_to_n_models": round((ours_rss - two_rss) / model_bytes, 3),
        "rss_growth_half_to_n_models": round((ours_rss - half_rss) / model_bytes, 3),
        "flower_peak_rss_mb": round(flower_rss / 2**20, 1), "max_abs_difference": difference,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
