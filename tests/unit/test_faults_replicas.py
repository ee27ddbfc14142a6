"""benchmarks/faults.py --replicas: the fault plan gives every seed one SIGKILL of the leader and one SIGSTOP longer
than the lease (one replica: SIGKILLs only, as before), the per-kind report counts failovers and stale replicas that
stood down, and bad flags are refused with a clear message."""
import pytest

from tests.support.benchmarks import load_benchmark

faults = load_benchmark("faults")


@pytest.mark.parametrize("seed", range(20))
def test_two_replicas_get_one_kill_and_one_pause_past_the_lease_per_seed(seed):
    kills, pod_faults = faults.operator_plan(seed, 10, 50.0, True, replicas=2)
    assert sorted(kind for _, _, kind in kills) == ["operator_sigkill", "operator_sigstop"]
    assert [at for at, _, _ in kills] == sorted(at for at, _, _ in kills)
    assert all(1.0 <= at <= 50.0 for at, _, _ in kills)
    for _, param, kind in kills:
        if kind == "operator_sigstop":  # paused longer than the lease: the other replica must take over
            assert 1.5 * faults.LEASE_SECONDS <= param <= 2.5 * faults.LEASE_SECONDS
        else:
            assert 0.0 <= param <= 2.0
    assert sorted(kind for kind, _ in pod_faults) == sorted(faults.POD_FAULTS)


def test_one_replica_is_only_killed():
    for seed in range(20):
        kills, _ = faults.operator_plan(seed, 10, 50.0, False)
        assert 1 <= len(kills) <= 3 and {kind for _, _, kind in kills} == {"operator_sigkill"}
    assert faults.operator_faults(1) == ("operator_sigkill",)
    assert faults.operator_faults(2) == ("operator_sigkill", "operator_sigstop")


def test_the_report_per_fault_kind_counts_failovers_and_stale_replicas():
    results = [
        {"injected": {"operator_sigkill": 1, "operator_sigstop": 1},
         "failovers": [["operator_sigkill", 6.5], ["operator_sigstop", 7.0]], "paused_stood_down": [True]},
        {"injected": {"operator_sigkill": 1, "operator_sigstop": 1},
         "failovers": [["operator_sigstop", None], ["operator_sigkill", 5.5]], "paused_stood_down": [False]},
        {"injected": {"operator_sigkill": 0, "operator_sigstop": 1},
         "failovers": [["operator_sigstop", 6.0]], "paused_stood_down": [None]},  # paused before it logged leading
    ]
    report = faults.by_fault_kind(results)
    assert report["operator_sigkill"] == {"injected": 2, "failovers_measured": 2, "no_failover": 0,
                                          "failover_seconds": {"min": 5.5, "median": 6.0, "max": 6.5, "mean": 6.0}}
    stop = report["operator_sigstop"]
    assert stop["injected"] == 3 and stop["failovers_measured"] == 2 and stop["no_failover"] == 1, stop
    assert stop["failover_seconds"] == {"min": 6.0, "median": 6.5, "max": 7.0, "mean": 6.5}
    assert stop["resumed_leaders_that_logged_losing_the_lease"] == "1 of 2"
    assert stop["paused_before_logging_the_acquisition"] == 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--replicas", "0"], "--replicas must be between 1 and 5, not 0"),
    (["--replicas", "9"], "--replicas must be between 1 and 5, not 9"),
    (["--fault-window", "0"], "--fault-window must be in (0, 1], not 0.0"),
])
def test_bad_flags_are_refused_with_a_clear_message(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        faults.main(["--target", "operator", *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
