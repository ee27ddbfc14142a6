"""The scheduling benchmarks at reduced size, asserting their targets (slow: `make test-slow`; the wall-clock ratios
are also marked `timing`)."""
import importlib.util
import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed_report() -> dict:
    return load("bench_sched_speed").main(["--nodes", "10000", "--tasks", "100", "--repeat", "3"])


@pytest.mark.slow
def test_speed_benchmark_schedules_most_tasks(speed_report):
    assert speed_report["tasks_waiting"] < speed_report["tasks"]


@pytest.mark.slow
@pytest.mark.timing
def test_speed_scales_with_the_input(speed_report):
    # 200 ms is the target on an idle machine (see the JSON line); shared CI cores only allow ratios:
    # a whole period costs a small multiple of one plain Python pass over the same objects.
    assert speed_report["ratio_vs_peer"] <= 40
    by_nodes = speed_report["ms_by_nodes"]
    assert by_nodes[10000] <= 8 * by_nodes[2500]  # about linear in nodes (4x nodes)
    by_tasks = speed_report["ms_by_tasks"]
    assert by_tasks[200] <= 8 * by_tasks[25]  # 8x tasks cost far less than 8x time


@pytest.mark.slow
def test_quality_matches_the_exhaustive_optimum():
    report = load("bench_sched_quality").main(["--fleets", "60", "--periods", "10"])
    assert report["fleets_feasible"] >= 30
    assert report["time-fair"]["period_vs_optimum_mean"] <= 1.1
    assert report["time-fair"]["share_within_10pct"] >= 0.95
    assert report["fastest"]["period_vs_optimum_max"] <= 1.0 + 1e-9
    assert report["random"]["period_vs_optimum_mean"] > report["time-fair"]["period_vs_optimum_mean"]
    assert report["time-fair"]["jain_index_mean"] > report["fastest"]["jain_index_mean"]


@pytest.mark.slow
def test_time_fair_reaches_the_target_faster_than_random():
    # full size (50 rounds, 40 devices, all of MNIST's training split): a few minutes on one core
    report = load("bench_sched_effect").main([])
    assert report["time-fair"]["speedup_vs_random"] is not None
    # the targets; what seed 0 and the other seeds measure is in the benchmark's docstring (quoted in
    # docs/internals.md), not repeated here. The speedup is in simulated time, not wall-clock time.
    assert report["time-fair"]["speedup_vs_random"] >= 3.0
    assert report["time-fair"]["accuracy_points_vs_random"] >= -1.0
    assert report["time-fair"]["devices_never_selected"] == 0
    assert report["fastest"]["devices_never_selected"] > 0
