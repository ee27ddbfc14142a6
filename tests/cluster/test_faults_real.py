"""benchmarks/faults.py --target operator --api real at 1 seed x 3 rounds on the real control plane: the operator, a
host process with the chart's arguments, is SIGKILLed and restarted at random points, one train pod's process is
crashed (SIGSEGV) and one killed (SIGKILL, as the OOM killer does) on its node agent, and the task still completes
with every round once, no pod created or started twice, no retry beyond the injected ones, nothing orphaned, no status
regression and the uninterrupted run's final model bit for bit. The same checks are then shown to fail on the run's
own record with a round lost, a pod created twice and a status that goes back (tests/unit/test_faults_checks.py covers
every kind on made-up records)."""
from __future__ import annotations

import argparse
import copy

import pytest

from tests.support.benchmarks import load_benchmark
from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_operator_killed_on_the_real_control_plane_loses_and_repeats_nothing(cluster: LocalCluster):
    faults = load_benchmark("faults", "faults_real")
    args = argparse.Namespace(target="operator", api="real", seeds=1, rounds=3, no_pod_faults=False,
                              leader_election=False, replicas=1, fault_window=0.9, time_budget=0.0, keep=False,
                              operator_tree="")
    seeds: list[dict] = []
    report = faults.real_main(args, cluster, seeds)
    print(report)
    assert not report["failures"], report
    injected = report["faults_injected"]
    assert injected["operator_sigkill"] >= 1, report
    assert injected["train_pod_crash"] == 1 and injected["train_pod_oom"] == 1, report
    # What the node agent reported for the signalled pods: the kernel's exit codes.
    assert report["pod_fault_exits"] == {"train_pod_crash": [(139, "Error")], "train_pod_oom": [(137, "Error")]}, report
    assert report["runs_completed"] == 1
    assert report["rounds_lost"] == 0 and report["rounds_duplicated"] == 0, report
    assert report["pods_duplicated"] == 0 and report["pods_orphaned"] == 0, report
    assert report["pod_retries_not_injected"] == 0 and report["status_regressions"] == 0, report
    assert report["training_deterministic"] is True and report["final_model_identical"] == 1, report

    # The record is real and complete: several stored versions of the task, every pod of every round, each started.
    record = seeds[0]["record"]
    assert len(record["versions"]) >= 3, len(record["versions"])
    names = {version["metadata"]["name"] for version in record["pod_versions"]}
    assert sum(name.endswith("-aggregate") for name in names) == 3, sorted(names)
    assert seeds[0]["pod_retries"] == 2, seeds[0]  # the two signalled pods, each retried once
    assert set(record["started_pods"]) == names, (sorted(names), record["started_pods"])

    # The same checks on this record, altered: each alteration is reported.
    lost = copy.deepcopy(record)
    lost["status"]["history"] = lost["status"]["history"][:-1]
    assert faults.check_operator_run(**lost)["lost"] == [3]
    twice = copy.deepcopy(record)
    twice["pod_versions"].append({"metadata": {"name": next(iter(names)), "uid": "another-uid"}})
    assert faults.check_operator_run(**twice)["pods_duplicated"] == [next(iter(names))]
    regressed = copy.deepcopy(record)
    regressed["versions"].append(copy.deepcopy(regressed["versions"][0]))
    regressed["versions"][-1].setdefault("status", {})["round"] = 0
    regressed["versions"][-1]["status"]["phase"] = "Running"
    assert faults.check_operator_run(**regressed)["regressions"], regressed["versions"][-1]["status"]
