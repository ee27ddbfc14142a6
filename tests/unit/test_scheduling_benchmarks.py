"""The scheduling benchmarks at reduced size, asserting their targets (slow: `make test-slow`; the wall-clock ratios
are also marked `timing`)."""

import pytest

from tests.support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def speed_report() -> dict:
    return load_benchmark("bench_sched_speed").main(["--nodes", "10000", "--tasks", "100", "--repeat", "3"])


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
def test_the_joint_solver_finds_the_exhaustive_optimum_and_its_heuristics_stay_close():
    report = load_benchmark("bench_sched_quality").main(["--instances", "40"])
    assert report["instances_feasible"] >= 25
    assert report["select_devices"]["gap_max"] <= 1e-6  # the shipped solver: exact on every small instance
    assert report["select_devices_claimed_optimal"] == report["instances_feasible"]
    assert report["local-search"]["gap_mean"] <= 0.05
    assert report["local-search"]["gap_mean"] < report["greedy"]["gap_mean"] < report["random"]["gap_mean"]


@pytest.mark.slow
def test_time_fair_reaches_the_targets_faster_than_random_in_the_quick_mode():
    # 2 seeds, 15 rounds, small MNIST slices: a smoke test of the benchmark and of the direction of its results; the
    # full run (10 seeds, the targets and the figures of the misses) is reported in docs/internals.md.
    report = load_benchmark("bench_sched_effect").main(["--quick", "--json"])
    assert [seed["seed"] for seed in report["seeds"]] == [0, 1]
    for seed in report["seeds"]:
        assert set(seed["policies"]) == {"time-fair", "random", "round-robin", "fastest"}
        assert seed["policies"]["time-fair"]["seconds_to_target"] is not None
        assert seed["policies"]["random"]["seconds_to_target"] is not None
        assert all(3 <= rounds <= 45 for rounds in seed["policies"]["time-fair"]["rounds_to_target"])
    summary = report["summary"]
    assert summary["time-fair"]["speedup_vs_random_min"] > 1.0
    assert summary["round-robin"]["jain_mean"] > summary["time-fair"]["jain_mean"] > summary["fastest"]["jain_mean"]


def test_rounds_to_target_counts_rounds_until_the_running_mean_reaches_it():
    effect = load_benchmark("bench_sched_effect")
    curve = [(10.0 * (i + 1), accuracy) for i, accuracy in enumerate([0.1, 0.5, 0.6, 0.9, 0.9, 0.9])]
    # running means over 3 rounds: 0.4 (round 3), 0.667, 0.8, 0.9
    assert [effect.rounds_to(curve, target) for target in (0.4, 0.5, 0.8, 0.9, 0.95)] == [3, 4, 5, 6, None]
    assert effect.time_to(curve, 0.8) == curve[effect.rounds_to(curve, 0.8) - 1][0]


def test_a_simulated_round_averages_every_device_s_model_not_the_last_one():
    """finish_round is FedAvg over the round's devices, each trained from the global model (the benchmark once kept
    views of the parameters, so every 'update' was the last device's model)."""
    import numpy as np

    from fedtask_worker.models import build_model
    from fedtask_worker.training import load_model_state, model_state, train_local

    effect = load_benchmark("bench_sched_effect")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), np.repeat([0, 1], 20)
    shards = (np.arange(0, 10), np.arange(20, 40))  # device 0: class 0 only; device 1: class 1 only
    data = effect.TaskData("t", "digits", x, y, x, y, shards, (6,), 2)
    model = build_model("mlp", (6,), 2, seed=3)
    start = effect.state_copy(model)
    run = effect.Run(data, model, effect.state_copy(model), rounds=1, devices={0: 1.0, 1: 2.0})
    run.round_start = 0.0
    effect.finish_round(run, 2.0, train=True, seed=0)

    trained = []
    for node in (0, 1):
        alone = load_model_state(build_model("mlp", (6,), 2, seed=3), start, "global")
        train_local(alone, x[shards[node]], y[shards[node]], epochs=effect.LOCAL_EPOCHS["digits"], batch_size=32,
                    learning_rate=effect.LEARNING_RATE, seed=1)
        trained.append(model_state(alone))
    for name, value in run.state.items():
        expected = (10 * trained[0][name] + 20 * trained[1][name]) / 30
        assert np.allclose(value, expected, atol=1e-5), name
    assert not all(np.allclose(run.state[name], trained[1][name]) for name in run.state)


def test_the_homogeneous_rounds_bound_on_a_fleet_worked_by_hand():
    """Two devices of 1 s and two of 10 s, two per round: Jain 0.5 allows the fast pair only (1 s rounds); Jain 1
    needs everyone equally often, so the mean device time per turn is (1 + 1 + 10 + 10) / 4 = 5.5 s."""
    import numpy as np

    tradeoff = load_benchmark("plot_sched_tradeoff")
    seconds = np.array([1.0, 1.0, 10.0, 10.0])
    bounds = [tradeoff.least_mean_round(seconds, 2, jain) for jain in (0.5, 0.8, 1.0)]
    assert bounds[0] == pytest.approx(1.0, abs=0.01)
    assert bounds[2] == pytest.approx(5.5, abs=0.01)
    assert bounds[0] < bounds[1] < bounds[2]


def _best_schedule(seconds, counts, per_round):
    """The least mean round time over every schedule of the ledger (exhaustive, small instances only)."""
    import functools
    import itertools

    @functools.cache
    def least(left):
        if not any(left):
            return 0.0
        best = float("inf")
        for devices in itertools.combinations([j for j, n in enumerate(left) if n], per_round):
            after = tuple(n - (j in devices) for j, n in enumerate(left))
            best = min(best, max(seconds[j] for j in devices) + least(after))
        return best

    return least(tuple(counts)) / (sum(counts) // per_round)


def test_the_distinct_device_bound_and_the_packing_bracket_the_exhaustive_optimum():
    import random

    import numpy as np

    tradeoff = load_benchmark("plot_sched_tradeoff")
    rng = random.Random(0)
    tight = 0
    for _ in range(60):
        size, per_round = rng.choice(((5, 2), (6, 2), (6, 3)))
        rounds = rng.randint(2, 4)
        counts = [0] * size
        for _ in range(rounds):  # a feasible ledger: `rounds` rounds of distinct devices
            for j in rng.sample(range(size), per_round):
                counts[j] += 1
        seconds = np.array([rng.choice((1.0, 2.0, 3.0, 5.0, 10.0)) * rng.uniform(0.8, 1.2) for _ in range(size)])
        schedule = tradeoff.pack(seconds, np.array(counts), per_round)
        assert all(len(set(devices)) == per_round for devices in schedule)
        assert np.bincount([j for devices in schedule for j in devices], minlength=size).tolist() == counts
        best = _best_schedule(tuple(seconds), counts, per_round)
        lower = tradeoff.distinct_lower_bound(seconds, np.array(counts), per_round)
        homogeneous = float(np.dot(counts, seconds)) / sum(counts)
        assert homogeneous - 1e-9 <= lower <= best + 1e-9 <= tradeoff.schedule_mean(seconds, schedule) + 2e-9
        tight += abs(lower - best) < 1e-9
    assert tight >= 30  # the bound is often exact on these sizes (not only a weak floor)


def test_a_device_in_every_round_makes_every_round_as_slow_as_it():
    """Device 0 (10 s) takes both rounds' turns: any schedule's rounds both cost 10 s, while equally slow rounds of
    the same turns would cost (2 x 10 + 1 + 1) / 4 = 5.5 s a device turn; the distinct-device bound sees it."""
    import numpy as np

    tradeoff = load_benchmark("plot_sched_tradeoff")
    seconds, counts = np.array([10.0, 1.0, 1.0, 1.0]), np.array([2, 1, 1, 0])
    assert tradeoff.distinct_lower_bound(seconds, counts, 2) == pytest.approx(10.0)
    assert tradeoff.schedule_mean(seconds, tradeoff.pack(seconds, counts, 2)) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="at most 3 turns of one device"):
        tradeoff.pack(seconds, np.array([3, 1, 0, 0]), 2)


def _least_total_at_jain(seconds, rounds, per_round, jain):
    """The least total time over every schedule of `rounds` rounds of `per_round` distinct devices whose
    participation has Jain's index >= `jain` (exhaustive over multisets of rounds; small instances only)."""
    import itertools

    import numpy as np

    combos = list(itertools.combinations(range(len(seconds)), per_round))
    best = float("inf")
    for chosen in itertools.combinations_with_replacement(combos, rounds):
        turns = np.bincount([j for devices in chosen for j in devices], minlength=len(seconds))
        if turns.sum() ** 2 / (len(turns) * (turns * turns).sum()) >= jain - 1e-9:
            best = min(best, sum(max(seconds[j] for j in devices) for devices in chosen))
    return best


def test_the_optimal_schedule_is_the_exhaustive_optimum_at_every_jain_level():
    """The exact program against every schedule of small instances (4-6 devices, 2-3 a round, 2-4 rounds): the same
    least total, a schedule of distinct devices at that Jain, and a lower bound no schedule beats. Fails if the
    program lets a device into a round twice, ignores the Jain level, or counts a round cheaper than its slowest."""
    import random

    import numpy as np

    tradeoff = load_benchmark("plot_sched_tradeoff")
    rng = random.Random(3)
    binding = 0
    for _ in range(40):
        size, per_round, rounds = rng.randint(4, 6), rng.randint(2, 3), rng.randint(2, 4)
        seconds = np.array([round(rng.uniform(1.0, 10.0), 2) for _ in range(size)])
        jain = rng.choice((0.5, 0.7, 0.8, 0.9, 0.95, 1.0))
        best = _least_total_at_jain(seconds, rounds, per_round, jain)
        optimum = tradeoff.optimal_schedule(seconds, rounds, per_round, jain)
        if best == float("inf"):
            assert optimum is None
            continue
        assert optimum.proven and len(optimum.schedule) == rounds
        assert all(len(set(devices)) == len(devices) == per_round for devices in optimum.schedule)
        turns = np.bincount([j for devices in optimum.schedule for j in devices], minlength=size)
        assert turns.sum() ** 2 / (size * (turns * turns).sum()) >= jain - 1e-9
        total = sum(max(seconds[j] for j in devices) for devices in optimum.schedule)
        assert total == pytest.approx(best, rel=1e-4)
        assert optimum.lower_bound <= best + 1e-6
        binding += best > _least_total_at_jain(seconds, rounds, per_round, 0.0) + 1e-9
    assert binding >= 10  # the Jain level changes the answer on many of these, so a program ignoring it fails


def test_a_mean_jain_lets_one_task_be_fairer_so_the_bound_reads_a_lower_level_for_the_others():
    """Three tasks, least rounds (proven, achieved) at Jain 0.7 and 0.8: a mean of 0.8 lets one task reach 1.0 and two
    sit at 0.7, so the longest round is bounded by the smaller of two tasks' rounds at 0.7, not by any task at 0.8;
    a level the grid lacks gives no bound at all."""
    tradeoff = load_benchmark("plot_sched_tradeoff")
    tasks = [{0.7: (60.0, 60.0, True), 0.8: (70.0, 70.0, True)}, {0.7: (50.0, 50.0, True), 0.8: (75.0, 75.0, True)},
             {0.7: (10.0, 10.0, True), 0.8: (12.0, 12.0, True)}]
    assert tradeoff.longest_least_round(tasks, 0.8) == pytest.approx(50.0)  # pairs: one of them at >= 0.7
    assert tradeoff.longest_least_round(tasks, 0.9) == pytest.approx(70.0)  # pairs at >= 0.85: one at >= 0.8
    assert tradeoff.longest_least_round(tasks, 0.7) is None  # pairs at >= 0.55: below the grid


@pytest.mark.slow
def test_the_period_analysis_brackets_time_fair_s_own_rounds():
    """analyse_sched_periods at 1 seed x 10 rounds: time-fair's real rounds are a schedule of its own ledger, so they
    cost at least that ledger's distinct-device bound, which is at least its homogeneous cost; the constructed
    schedule lies between; and the bound's speed-ups shrink as whole turns and a real schedule are counted."""
    report = load_benchmark("analyse_sched_periods").main(["--seeds", "1", "--rounds", "10"])
    (seed,) = report["seeds"]
    assert sum(seed["decisions_by_tasks"].values()) == seed["decisions"] > 0
    for task in seed["tasks"]:
        assert task["homogeneous"] - 0.01 <= task["distinct_bound"] <= task["packed"] + 0.01
        assert task["distinct_bound"] <= task["round_seconds"] + 0.01
        assert task["alone"]["bound_at_jain"] <= task["alone"]["round_seconds"] + 0.01
    for row in report["bound"]:
        assert row["speedup_bound"] + 0.01 >= row["speedup_bound_distinct"] >= row["speedup_packed"] - 0.01
