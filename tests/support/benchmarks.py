"""The benchmark scripts (benchmarks/*.py are scripts, not a package) imported as modules by the tests."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(script: str, module_name: str | None = None) -> ModuleType:
    """benchmarks/`script`.py executed as module `module_name` (default: the script's name), registered in
    sys.modules first: dataclasses in a benchmark resolve their annotations through it."""
    name = module_name or script
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
    assert spec is not None and spec.loader is not None, f"no benchmark {script}.py in {BENCHMARKS}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_real_operator_faults(cluster, module_name: str, **arguments) -> tuple[ModuleType, dict, dict]:
    """benchmarks/faults.py --target operator --api real at 1 seed x 3 rounds on `cluster` (a tests.support.cluster
    LocalCluster), `arguments` overriding its defaults. Returns the module, the report (asserted to list no failure)
    and the seed's result, whose `record` is what `check_operator_run` was given."""
    faults = load_benchmark("faults", module_name)
    args = argparse.Namespace(**{**dict(target="operator", api="real", seeds=1, rounds=3, no_pod_faults=False,
                                        leader_election=False, replicas=1, fault_window=0.9, time_budget=0.0,
                                        keep=False, operator_tree=""), **arguments})
    seeds: list[dict] = []
    report = faults.real_main(args, cluster, seeds)
    print(report)
    assert not report["failures"], report
    return faults, report, seeds[0]


def assert_nothing_lost_or_repeated(report: dict, seed: dict) -> set[str]:
    """The operator-fault invariants of a 1-seed, 3-round report, and a record that is real and complete (several
    stored task versions, every pod of every round, each started). Returns the record's pod names."""
    assert report["runs_completed"] == 1
    assert report["rounds_lost"] == 0 and report["rounds_duplicated"] == 0, report
    assert report["pods_duplicated"] == 0 and report["pods_orphaned"] == 0, report
    assert report["pod_retries_not_injected"] == 0 and report["status_regressions"] == 0, report
    assert report["training_deterministic"] is True and report["final_model_identical"] == 1, report
    record = seed["record"]
    assert len(record["versions"]) >= 3, len(record["versions"])
    names = {version["metadata"]["name"] for version in record["pod_versions"]}
    assert sum(name.endswith("-aggregate") for name in names) == 3, sorted(names)
    assert set(record["started_pods"]) == names, (sorted(names), record["started_pods"])
    return names
