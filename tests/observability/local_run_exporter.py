"""A real process that exports the operator's metrics from a real local run, for Prometheus to scrape.

    python tests/observability/local_run_exporter.py --port N --workdir DIR MANIFEST...

Runs `fedtask run MANIFEST... --workdir DIR` in this process and serves /metrics with the operator's own metrics
module: a watcher thread feeds every status transition the run writes (DIR/<task>/federatedtask.json) to
`metrics.record_status_change` and the phase counts to `metrics.set_task_counts`, as the operator's handlers do, and
device selection is timed into `fedtask_scheduling_seconds` as the operator's reconciler does. Prints "run finished"
when the run ends, then keeps serving until it is terminated.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from pathlib import Path

from fedtask_operator import metrics
from fedtask_operator.local import cli as local_cli
from fedtask_operator.local import runtime as local_runtime


def timed_select_devices(select_devices):
    def select(*args, **kwargs):
        started = time.perf_counter()
        try:
            return select_devices(*args, **kwargs)
        finally:
            metrics.SCHEDULING_SECONDS.observe(time.perf_counter() - started)
    return select


def watch_statuses(workdir: Path, stop: threading.Event, interval: float = 0.1) -> None:
    seen: dict[tuple[str, str], dict] = {}
    while not stop.is_set():
        counts: collections.Counter = collections.Counter()
        for path in sorted(workdir.glob("*/federatedtask.json")):
            try:
                task = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):  # written atomically; a vanished file is a deleted task
                continue
            key = (task["metadata"].get("namespace") or "default", task["metadata"]["name"])
            status = task.get("status") or {}
            if status != seen.get(key):
                metrics.record_status_change(*key, seen.get(key), status)
                seen[key] = status
            if status.get("phase"):
                counts[(key[0], status["phase"])] += 1
        metrics.set_task_counts(dict(counts))
        stop.wait(interval)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("manifests", nargs="+")
    args = parser.parse_args(argv)
    metrics.serve(args.port)
    local_runtime.select_devices = timed_select_devices(local_runtime.select_devices)
    stop = threading.Event()
    watcher = threading.Thread(target=watch_statuses, args=(args.workdir, stop), daemon=True)
    watcher.start()
    code = local_cli.main([*args.manifests, "--workdir", str(args.workdir)])
    time.sleep(0.5)  # the watcher's last pass sees the final statuses
    print(f"run finished: exit {code}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
