"""benchmarks/faults.py --target operator --api real --replicas 2 at 1 seed x 3 rounds on the real control plane: two
operator replicas (host processes with the chart's arguments and a 6 s Lease) start together; the current leader is
SIGKILLed (and started again), and, in the seed's order, the leader is SIGSTOPped for longer than the lease and then
SIGCONTed. The other replica takes the Lease over each time, the resumed stale replica stands down, and the task
still completes with every round once, no pod created or started twice, nothing orphaned, no status regression and
the uninterrupted run's final model bit for bit. The checks are then shown to fail on the run's own record with what
a stale replica acting on old state would leave: a pod created again, a pod started again, an older status written
after a newer one."""
from __future__ import annotations

import copy

import pytest

from tests.support.benchmarks import assert_nothing_lost_or_repeated, run_real_operator_faults
from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_two_replicas_with_the_leader_killed_and_paused_past_its_lease_lose_and_repeat_nothing(cluster: LocalCluster):
    # Faults within the first half of the uninterrupted time: with 3 rounds, a later fault could find the task done.
    faults, report, seed = run_real_operator_faults(cluster, "faults_leader_real", no_pod_faults=True,
                                                    leader_election=True, replicas=2, fault_window=0.5)
    injected = report["faults_injected"]
    assert (injected["operator_sigkill"], injected["operator_sigstop"]) == (1, 1), report
    assert report["kills_after_the_task_ended"] == 0, report
    kinds = report["by_fault_kind"]
    for kind in ("operator_sigkill", "operator_sigstop"):  # the other replica (or the restarted one) took over
        assert kinds[kind]["failovers_measured"] == 1 and kinds[kind]["no_failover"] == 0, kinds
    # The resumed replica noticed it had lost the Lease (unless it was paused before it had logged leading at all).
    stop = kinds["operator_sigstop"]
    assert (stop["resumed_leaders_that_logged_losing_the_lease"], stop["paused_before_logging_the_acquisition"]) in (
        ("1 of 1", 0), ("0 of 0", 1)), kinds
    # the chart's admission fence denies the paused leader's late create (before it, 6 of 32 real seeds had a pod twice)
    names = assert_nothing_lost_or_repeated(report, seed)
    record = seed["record"]

    # What a stale replica acting on old state would leave, on this record: each is reported.
    pod = sorted(names)[-1]
    created_again = copy.deepcopy(record)
    created_again["pod_versions"].append({"metadata": {"name": pod, "uid": "created-by-the-stale-replica"}})
    assert faults.check_operator_run(**created_again)["pods_duplicated"] == [pod]
    started_again = copy.deepcopy(record)
    started_again["started_pods"].append(pod)
    assert faults.check_operator_run(**started_again)["pods_duplicated"] == [pod]
    stale_status = copy.deepcopy(record)
    older = next(v for v in stale_status["versions"] if (v.get("status") or {}).get("round"))
    stale_status["versions"].append(copy.deepcopy(older))  # an older status written after the newest
    assert faults.check_operator_run(**stale_status)["regressions"], older.get("status")
