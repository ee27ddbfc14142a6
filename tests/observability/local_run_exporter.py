"""A real process that exports the operator's metrics from a real local run, for Prometheus to scrape.

    python tests/observability/local_run_exporter.py --port N --workdir DIR MANIFEST...

Runs `fedtask run MANIFEST... --workdir DIR` in this process and serves /metrics with the operator's own metrics
module, fed the way the operator feeds it: every status write of the run goes through
`metrics.record_status_change(old, new)` and the phase counts through `metrics.set_task_counts` (as the operator's
reconciler and handlers do after each status patch), and device selection is timed into
`fedtask_scheduling_seconds`. The run starts once Prometheus has scraped the exporter (a rate needs a sample before
each increase). Prints "run finished" when the run ends, then serves until it is terminated.
"""
from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path

from fedtask_operator.core.scheduling import collection
from fedtask_operator.kube import metrics
from fedtask_operator.local import cli as local_cli
from fedtask_operator.local.store import LocalStore


class FirstScrape:
    """A collector that notes the first scrape (describe() keeps registration from collecting)."""

    def __init__(self):
        self.seen = threading.Event()

    def describe(self):
        return []

    def collect(self):
        self.seen.set()
        return []


def timed_select_devices(select_devices):
    def select(*args, **kwargs):
        started = time.perf_counter()
        try:
            return select_devices(*args, **kwargs)
        finally:
            metrics.SCHEDULING_SECONDS.observe(time.perf_counter() - started)
    return select


def metered_write_status(write_status):
    def write(store: LocalStore, name: str, status: dict) -> bool:
        task = store.tasks[name]
        old = task.get("status")
        changed = write_status(store, name, status)
        if changed:
            metrics.record_status_change(task["metadata"].get("namespace") or "default", name, old, status)
            counts = collections.Counter((t["metadata"].get("namespace") or "default", t["status"]["phase"])
                                         for t in store.tasks.values() if (t.get("status") or {}).get("phase"))
            metrics.set_task_counts(dict(counts))
        return changed
    return write


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("manifests", nargs="+")
    args = parser.parse_args(argv)
    first_scrape = FirstScrape()
    metrics.REGISTRY.register(first_scrape)
    metrics.serve(args.port)
    if not first_scrape.seen.wait(60):
        print("no scrape within 60 s", flush=True)
        return 1
    # the local runtime selects through the learning period's decision (core/scheduling/collection.py)
    collection.select_devices = timed_select_devices(collection.select_devices)
    LocalStore.write_status = metered_write_status(LocalStore.write_status)
    code = local_cli.main([*args.manifests, "--workdir", str(args.workdir)])
    print(f"run finished: exit {code}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
