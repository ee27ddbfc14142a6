"""benchmarks/faults.py --target operator --api real at 1 seed x 3 rounds on the real control plane: the operator, a
host process with the chart's arguments, is SIGKILLed and restarted at random points, one train pod's process is
crashed (SIGSEGV) and one killed (SIGKILL, as the OOM killer does) on its node agent, and the task still completes
with every round once, no pod created or started twice, no retry beyond the injected ones, nothing orphaned, no status
regression and the uninterrupted run's final model bit for bit. The same checks are then shown to fail on the run's
own record with a round lost, a pod created twice and a status that goes back (tests/unit/test_faults_checks.py covers
every kind on made-up records)."""
from __future__ import annotations

import copy

import pytest

from tests.support.benchmarks import assert_nothing_lost_or_repeated, run_real_operator_faults
from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_operator_killed_on_the_real_control_plane_loses_and_repeats_nothing(cluster: LocalCluster):
    faults, report, seed = run_real_operator_faults(cluster, "faults_real")
    injected = report["faults_injected"]
    assert injected["operator_sigkill"] >= 1, report
    assert injected["train_pod_crash"] == 1 and injected["train_pod_oom"] == 1, report
    # What the node agent reported for the signalled pods: the kernel's exit codes.
    assert report["pod_fault_exits"] == {"train_pod_crash": [(139, "Error")], "train_pod_oom": [(137, "Error")]}, report
    names = assert_nothing_lost_or_repeated(report, seed)
    assert seed["pod_retries"] == 2, seed  # the two signalled pods, each retried once
    record = seed["record"]

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
