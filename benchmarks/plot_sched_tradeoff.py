"""The time/fairness trade-off of `time-fair` as its fairness weight sweeps (one JSON line; a figure with --plot).

The same simulated runtime as bench_sched_effect.py (its fleet, tasks, shards, time model and learning periods), here
without training: for every weight, the mean round time of the tasks and Jain's index of the devices' participation
after ROUNDS rounds, averaged over the seeds; `random`, `round-robin` and `fastest` on the same draws for reference.
Also a bound no policy can beat: for each Jain level, the least mean round time of a single task whose rounds are all
homogeneous (every round's devices equally slow, so a round costs only its devices' own times), by the participation
rates r_i = max(0, a - b t_i) that minimise sum r_i t_i at that Jain (a Lagrange condition of the relaxation; its
share of random's round time bounds any speed-up per round from above).

The same bound where it counts, the time until every task reached its target: every round also costs the server
SERVER_SECONDS (and may wait for its learning period's collection window or for busy devices), so task k's time per
round under any policy is at least b_k + SERVER_SECONDS (b_k: task k's bound at that Jain), and random's, w_k, is
what it measured (simulated time over rounds, every wait included). With as many rounds to the target as random
needs (n per task), random takes n max_k w_k and any policy at least n max_k (b_k + SERVER_SECONDS), so no policy
is more than max_k w_k / max_k (b_k + SERVER_SECONDS) times faster at that Jain for every task (`speedup_bound`, the
mean over the seeds; `speedup_bound_per_seed`). A policy that needs fewer rounds than random may beat it by that
ratio (bench_sched_effect.py reports each task's `rounds_to_target`).

Rounds of exactly equally slow devices are out of reach: a round holds distinct devices, and a device's turns are
whole. With the bound's rates as whole turns over ROUNDS rounds, `distinct_lower_bound` bounds any schedule of those
turns from below (the rounds slower than theta are at least the turns slower than theta / devices per round, and at
least the turns of any one such device), and `pack` builds a real one (`speedup_bound_distinct`, `speedup_packed`).

With `--effect FILE...` (JSON lines of bench_sched_effect.py runs at several `--fairness-weight`s) a second panel
shows what the weights give where it counts: the mean speed-up to every task's target against random, over Jain's
index, each point labelled with its weight and its accuracy against random.

    python benchmarks/plot_sched_tradeoff.py [--seeds 3] [--rounds 40] [--plot docs/sched-tradeoff.png]
        [--effect effect-w1.json effect-w2.json ...] [--effect-later effect-w2-later.json] [--reuse REPORT]
        [--periods PERIODS]  (an analyse_sched_periods.py --optimum output: the exact ceiling on the right panel)
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sched_effect as effect  # the benchmark next to this file

WEIGHTS = (0.0, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


def draws(seed: int, task_count: int):
    nodes, speeds = effect.load_fleet(effect.DEFAULT_FLEET)
    order = list(range(len(nodes)))
    random.Random(seed).shuffle(order)
    nodes, speeds = [nodes[i] for i in order], [speeds[i] for i in order]
    return nodes, speeds, effect.build_tasks(task_count, len(nodes), seed, effect.TRAIN_SLICE)


def measure(policy: str, weight: float, seeds: int, rounds: int, task_count: int) -> dict:
    times, walls, jains = [], [], []
    for seed in range(seeds):
        nodes, speeds, tasks = draws(seed, task_count)
        runs = effect.simulate(policy, tasks, nodes, speeds, rounds, seed, weight, train=False)
        names = [node["metadata"]["name"] for node in nodes]
        times.append(statistics.mean(s for run in runs for s in run.round_seconds))
        walls.append(statistics.mean(run.curve[-1][0] / len(run.curve) for run in runs))
        jains.append(effect.jain_of_runs(runs, names))
    return {"round_seconds": round(statistics.mean(times), 3), "wall_per_round": round(statistics.mean(walls), 3),
            "jain": round(statistics.mean(jains), 3)}


def bound(seeds: int, rounds: int, task_count: int, levels, optimum=()) -> list[dict]:
    """The homogeneous-rounds bound (see the module docstring): the round time averaged over the seeds' tasks, and
    the speed-up to every task's target against random's measured time per round, per seed. With `optimum`, also the
    exact least-time schedule of each task at each of the levels in `optimum` (`optimal_schedule`; see
    `optimum_rows`)."""
    rows = {level: [] for level in levels}
    speedups: dict[float, list[float]] = {level: [] for level in levels}
    distinct_speedups: dict[float, list[float]] = {level: [] for level in levels}
    packed_speedups: dict[float, list[float]] = {level: [] for level in levels}
    optima: list[dict] = []  # per seed: random's walls, each task's {level: (least, achieved) mean round, proven}
    for seed in range(seeds):
        nodes, speeds, tasks = draws(seed, task_count)
        peer = effect.simulate("random", tasks, nodes, speeds, rounds, seed, 0.0, train=False)
        walls = [run.curve[-1][0] / len(run.curve) for run in peer]
        optima.append({"walls": walls, "tasks": [{} for _ in tasks]})
        for level in levels:
            least, distinct, packed = [], [], []
            for index, task in enumerate(tasks):
                seconds = np.array([len(s) * effect.SECONDS_PER_SAMPLE / v for s, v in zip(task.shards, speeds)])
                mean_round, rates = least_rates(seconds, effect.PER_ROUND, level)
                least.append(mean_round)
                if rates is not None:
                    turns = whole_turns(rates, rounds)
                    distinct.append(distinct_lower_bound(seconds, turns, effect.PER_ROUND))
                    packed.append(schedule_mean(seconds, pack(seconds, turns, effect.PER_ROUND)))
                if level in optimum:
                    best = optimal_schedule(seconds, rounds, effect.PER_ROUND, level)
                    if best is not None:
                        optima[-1]["tasks"][index][level] = (best.lower_bound / rounds,
                                                             schedule_mean(seconds, best.schedule), best.proven)
            rows[level].extend(least)
            speedups[level].append(max(walls) / max(b + effect.SERVER_SECONDS for b in least))
            if len(distinct) == len(tasks):
                distinct_speedups[level].append(max(walls) / max(b + effect.SERVER_SECONDS for b in distinct))
                packed_speedups[level].append(max(walls) / max(b + effect.SERVER_SECONDS for b in packed))
    return [{"jain": level, "round_seconds": round(float(statistics.mean(rows[level])), 3),
             "speedup_bound": round(statistics.mean(speedups[level]), 2),
             "speedup_bound_per_seed": [round(value, 2) for value in speedups[level]],
             **({"speedup_bound_distinct": round(statistics.mean(distinct_speedups[level]), 2),
                 "speedup_bound_distinct_per_seed": [round(value, 2) for value in distinct_speedups[level]],
                 "speedup_packed": round(statistics.mean(packed_speedups[level]), 2),
                 "speedup_packed_per_seed": [round(value, 2) for value in packed_speedups[level]]}
                if len(distinct_speedups[level]) == seeds else {}),
             **(optimum_rows(optima, level) if optimum else {})} for level in levels]


def optimum_rows(optima: list[dict], level: float) -> dict:
    """The exact ceiling at `level`, from each seed's optimal schedules (`bound(optimum=levels)`):

    - `speedup_optimum`: every task at Jain >= level, as many rounds as random: random's longest time per round over
      the tasks / the longest proven least round (+ SERVER_SECONDS) over the tasks. No schedule of those rounds does
      better (per seed: `speedup_optimum_per_seed`). `speedup_optimum_achieved`: what the schedules found achieve
      (equal within the solver's 1e-4 gap unless it hit its time limit: `unproven`, the number of such tasks);
    - `speedup_optimum_mean_jain`: only the *mean* of the tasks' Jain >= level (what bench_sched_effect.py reports):
      see `longest_least_round`. A bound, looser than the per-task one (levels are a grid); None when it would need a
      level below the grid."""
    if any(level not in task for seed in optima for task in seed["tasks"]):
        return {}
    per_task = [max(seed["walls"]) / max(task[level][0] + effect.SERVER_SECONDS for task in seed["tasks"])
                for seed in optima]
    floors = [longest_least_round(seed["tasks"], level) for seed in optima]
    mean_jain = None if None in floors else [max(seed["walls"]) / (floor + effect.SERVER_SECONDS)
                                             for seed, floor in zip(optima, floors)]
    achieved = [max(seed["walls"]) / max(task[level][1] + effect.SERVER_SECONDS for task in seed["tasks"])
                for seed in optima]
    return {"speedup_optimum": round(statistics.mean(per_task), 3),
            "speedup_optimum_achieved": round(statistics.mean(achieved), 3),
            "unproven": sum(not task[level][2] for seed in optima for task in seed["tasks"]),
            "speedup_optimum_per_seed": [round(value, 3) for value in per_task],
            "speedup_optimum_mean_jain": round(statistics.mean(mean_jain), 3) if mean_jain else None,
            "speedup_optimum_mean_jain_per_seed": [round(value, 3) for value in mean_jain] if mean_jain else None}


def longest_least_round(tasks: list[dict], level: float) -> float | None:
    """A lower bound on the longest mean round over the tasks when only the mean of their Jain indices is >= level:
    within any subset S of the T tasks some task has Jain >= (T level - (T - |S|)) / |S| (no index is above 1), so
    its round costs at least its least round at the highest computed level not above that. None when a proper subset
    needs a level below every computed one."""
    count, floor = len(tasks), 0.0
    for size in range(1, count + 1):
        needed = (count * level - (count - size)) / size
        if 1 < size < count and needed < min(tasks[0]) - 1e-9:
            return None
        for subset in itertools.combinations(tasks, size):
            floor = max(floor, min(least_at(task, needed) for task in subset))
    return floor


def least_at(task: dict, jain: float) -> float:
    """A task's proven least mean round at the highest computed Jain level not above `jain` (0 when none is)."""
    levels = [level for level in task if level <= jain + 1e-9]
    return task[max(levels)][0] if levels else 0.0


def least_mean_round(seconds: np.ndarray, per_round: int, jain: float) -> float:
    return least_rates(seconds, per_round, jain)[0]


def least_rates(seconds: np.ndarray, per_round: int, jain: float) -> tuple[float, np.ndarray | None]:
    """(the least mean round time at Jain's index >= `jain`, the participation rates per round that reach it; None
    when no rate vector does)."""
    best, best_rates = float("inf"), None
    for slope in np.linspace(0.0, 4.0 / max(float(seconds.mean()), 1e-9), 801):
        low, high = 0.0, float(per_round + slope * seconds.max())
        for _ in range(60):  # the level a with sum(max(0, a - slope t)) = per_round
            middle = (low + high) / 2
            if np.maximum(0.0, middle - slope * seconds).sum() > per_round:
                high = middle
            else:
                low = middle
        rates = np.maximum(0.0, low - slope * seconds)
        if rates.sum() <= 0:
            continue
        rates *= per_round / rates.sum()
        if rates.sum() ** 2 / (len(rates) * (rates ** 2).sum()) >= jain - 1e-9:
            mean_round = float((rates * seconds).sum() / per_round)
            if mean_round < best:
                best, best_rates = mean_round, rates
    return best, best_rates



def distinct_lower_bound(seconds: np.ndarray, counts: np.ndarray, per_round: int) -> float:
    """A lower bound on the mean round time of any schedule in which device i takes counts[i] turns, `per_round`
    distinct devices a round (sum(counts) / per_round rounds), a round costing its slowest device.

    The sum of the rounds' times is the integral over theta of the number of rounds slower than theta; at least
    ceil(S / per_round) rounds hold the S turns of devices slower than theta, and at least max(counts) of those
    devices' rounds (a device appears once in a round)."""
    seconds, counts = np.asarray(seconds, dtype=float), np.asarray(counts, dtype=int)
    rounds = int(counts.sum()) // per_round
    if rounds == 0:
        return 0.0
    order = np.argsort(-seconds, kind="stable")
    ordered, turns = seconds[order], counts[order]
    total, slower, most = 0.0, 0, 0
    for j in range(len(ordered)):
        slower += int(turns[j])
        most = max(most, int(turns[j]))
        below = ordered[j + 1] if j + 1 < len(ordered) else 0.0
        total += max(-(-slower // per_round), most) * (ordered[j] - below)
    return total / rounds


def pack(seconds: np.ndarray, counts: np.ndarray, per_round: int) -> list[list[int]]:
    """A schedule of the ledger (device i in counts[i] rounds, `per_round` distinct devices each): the rounds are
    filled slowest first, each with the devices that must be in every remaining round, then the slowest with turns
    left. Raises ValueError when no schedule exists (a device with more turns than rounds, or turns not a multiple
    of per_round)."""
    seconds, left = np.asarray(seconds, dtype=float), np.asarray(counts, dtype=int).copy()
    total = int(left.sum())
    if total % per_round or (len(left) and int(left.max()) > total // per_round):
        raise ValueError(f"no schedule of {total} turns in rounds of {per_round} distinct devices with at most "
                         f"{int(left.max()) if len(left) else 0} turns of one device")
    slowest_first = np.argsort(-seconds, kind="stable")
    schedule = []
    for remaining in range(total // per_round, 0, -1):
        forced = [int(j) for j in slowest_first if left[j] == remaining]
        others = [int(j) for j in slowest_first if 0 < left[j] < remaining]
        chosen = forced + others[: per_round - len(forced)]
        left[chosen] -= 1
        schedule.append(chosen)
    return schedule


def schedule_mean(seconds: np.ndarray, schedule: list[list[int]]) -> float:
    return float(np.mean([max(seconds[j] for j in devices) for devices in schedule])) if schedule else 0.0


def whole_turns(rates: np.ndarray, rounds: int) -> np.ndarray:
    """Participation rates per round as whole turns over `rounds` rounds (largest remainders)."""
    exact = np.asarray(rates, dtype=float) * rounds
    turns = np.minimum(np.floor(exact).astype(int), rounds)
    short = int(round(float(exact.sum()))) - int(turns.sum())
    for j in np.argsort(-(exact - turns), kind="stable")[:max(short, 0)]:
        turns[j] += 1
    return turns


@dataclasses.dataclass
class Optimum:
    """The least-time schedule at a Jain level (`optimal_schedule`): the best rounds found, and a lower bound on the
    total time of any schedule at that level (the solver's proven bound; `proven`: the schedule is within the
    solver's gap of it, else the time limit came first and the schedule may be worse)."""

    schedule: list[list[int]]
    lower_bound: float
    proven: bool


def optimal_schedule(seconds: np.ndarray, rounds: int, per_round: int, jain: float,
                     time_limit: float = 60.0) -> Optimum | None:
    """The schedule of `rounds` rounds of `per_round` distinct devices whose participation has Jain's index >= `jain`
    and whose total time (each round costs its slowest device) is least over *every* such schedule; None when no
    schedule reaches `jain`. At `time_limit` seconds the solver stops with its best schedule and its proven bound.

    A mixed-integer program (scipy's HiGHS), exact because rounds are interchangeable: with the devices slowest first,
    c_j rounds run at level j (devices j.. only, costing at most seconds[j]); y_ji of those hold device i (y_ji <= c_j,
    sum_i y_ji = per_round c_j: such a multiset always splits into c_j rounds of distinct devices); x_i = sum_j y_ji is
    device i's turns. Jain >= `jain` is sum x_i^2 <= (sum x_i)^2 / (n jain), with x_i^2 exact at whole x_i as the
    largest of the secants (2m + 1) x_i - m (m + 1), m = 0..rounds. Minimise sum_j c_j seconds[j]."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    seconds = np.asarray(seconds, dtype=float)
    n = len(seconds)
    order = np.argsort(-seconds, kind="stable")
    ordered = seconds[order]
    pairs = [(j, i) for j in range(n) for i in range(j, n)]  # level j may hold device i (i as fast or faster)
    c0, y0 = 0, n
    x0 = y0 + len(pairs)
    q0 = x0 + n
    size = q0 + n
    rows, columns, values, lower, upper = [], [], [], [], []

    def constraint(terms, low, high):
        for column, value in terms:
            rows.append(len(lower))
            columns.append(column)
            values.append(value)
        lower.append(low)
        upper.append(high)

    for p, (j, _device) in enumerate(pairs):
        constraint([(y0 + p, 1.0), (c0 + j, -1.0)], -np.inf, 0.0)
    for j in range(n):
        constraint([(y0 + p, 1.0) for p, (level, _) in enumerate(pairs) if level == j] + [(c0 + j, -per_round)],
                   0.0, 0.0)
    for i in range(n):
        constraint([(y0 + p, 1.0) for p, (_, device) in enumerate(pairs) if device == i] + [(x0 + i, -1.0)],
                   0.0, 0.0)
        for m in range(rounds + 1):
            constraint([(q0 + i, 1.0), (x0 + i, -(2 * m + 1))], -m * (m + 1), np.inf)
    constraint([(q0 + i, 1.0) for i in range(n)], -np.inf, (per_round * rounds) ** 2 / (n * jain))
    constraint([(c0 + j, 1.0) for j in range(n)], rounds, rounds)
    matrix = coo_matrix((values, (rows, columns)), shape=(len(lower), size)).tocsr()
    cost = np.zeros(size)
    cost[:n] = ordered
    integrality = np.ones(size)
    integrality[q0:] = 0
    upper_bounds = np.full(size, float(rounds))
    upper_bounds[q0:] = np.inf
    result = milp(cost, constraints=LinearConstraint(matrix, lower, upper), integrality=integrality,
                  bounds=Bounds(0.0, upper_bounds), options={"time_limit": time_limit, "mip_rel_gap": 1e-4})
    if result.status == 2:  # infeasible: no schedule reaches that Jain
        return None
    if result.x is None:
        raise RuntimeError(f"optimal_schedule: the solver found no schedule: {result.message}")
    solution = np.round(result.x).astype(int)
    schedule = []
    for j in range(n):
        count = int(solution[c0 + j])
        if not count:
            continue
        turns = [int(order[i]) for p, (level, i) in enumerate(pairs) if level == j
                 for _ in range(int(solution[y0 + p]))]
        schedule.extend([turns[r::count] for r in range(count)])  # each device's <= count copies land apart
    return Optimum(schedule, float(result.mip_dual_bound), result.status == 0)


def plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    effect = report.get("effect") or []
    figure, axes = plt.subplots(1, 2 if effect else 1, figsize=(14 if effect else 7.5, 5), squeeze=False)
    axis = axes[0][0]
    sweep = report["time-fair"]
    axis.plot([p["jain"] for p in sweep], [p["round_seconds"] for p in sweep], "o-", color="tab:blue",
              label="time-fair, weight swept")
    for point in sweep:
        axis.annotate(f"{point['weight']:g}", (point["jain"], point["round_seconds"]), textcoords="offset points",
                      xytext=(-4, 6), fontsize=8, color="tab:blue")
    limit = report["bound"]
    axis.plot([p["jain"] for p in limit], [p["round_seconds"] for p in limit], "--", color="gray",
              label="bound: homogeneous rounds, one task alone")
    markers = {"random": ("s", "tab:red"), "round-robin": ("^", "tab:green"), "fastest": ("D", "tab:purple")}
    for policy, (marker, color) in markers.items():
        axis.plot(report[policy]["jain"], report[policy]["round_seconds"], marker, color=color, markersize=8,
                  label=policy)
    third = report["random"]["round_seconds"] / 3
    axis.axhline(third, color="tab:red", linewidth=0.8, linestyle=":", label="3x faster rounds than random")
    axis.axvline(0.8, color="black", linewidth=0.8, linestyle=":", label="Jain 0.8")
    axis.fill_between([0.8, 1.0], 0, third, color="tab:orange", alpha=0.12, label="both targets")
    axis.set_xlabel("Jain's index of device participation (mean over tasks)")
    axis.set_ylabel("mean round time, simulated seconds")
    axis.set_xlim(0.0, 1.02)
    axis.set_ylim(0, report["random"]["round_seconds"] * 1.1)
    axis.set_title(f"time-fair trade-off: {report['devices']} devices, 10x speed spread, {report['tasks']} tasks",
                   fontsize=10)
    axis.legend(fontsize=8, loc="upper left")
    if effect:
        plot_effect(axes[0][1], effect, report["bound"], report.get("effect_later") or [], report.get("optimum") or [])
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot_effect(axis, effect: list[dict], limit: list[dict], later: list[dict], optimum: list[dict]) -> None:
    """Speed-up to target (mean over seeds) against Jain, per weight; the peers from the same runs; the bounds."""
    axis.plot([p["jain"] for p in limit], [p["speedup_bound"] for p in limit], "--", color="gray",
              label="bound at random's rounds to target (homogeneous rounds + server time; mean of seeds)")
    for point in limit:
        axis.annotate(f"{point['speedup_bound']:.2f}", (point["jain"], point["speedup_bound"]),
                      textcoords="offset points", xytext=(-10, 6), fontsize=7, color="gray")
    tight = [p for p in limit if "speedup_bound_distinct" in p]
    if tight:
        axis.plot([p["jain"] for p in tight], [p["speedup_bound_distinct"] for p in tight], "-.", color="black",
                  linewidth=0.9, label="bound with whole turns, distinct devices per round")
        axis.plot([p["jain"] for p in tight], [p["speedup_packed"] for p in tight], ":", color="black",
                  linewidth=1.2, label="achieved by a schedule of those turns (one task alone, no waits)")
    if optimum:
        seeds = optimum[0]["seeds"]
        axis.plot([p["jain"] for p in optimum], [p["speedup_optimum"] for p in optimum], "v-", color="tab:red",
                  linewidth=1.2, label=f"exact ceiling: the best schedule of random's rounds, every task at that Jain "
                                       f"({seeds} seeds)")
        for point in optimum:
            axis.annotate(f"{point['speedup_optimum']:.2f}", (point["jain"], point["speedup_optimum"]),
                          textcoords="offset points", xytext=(6, -4), fontsize=8, color="tab:red")
    rows = sorted(effect, key=lambda row: row["fairness_weight"])
    axis.plot([r["jain"] for r in rows], [r["speedup"] for r in rows], "o-", color="tab:blue",
              label="time-fair, weight swept")
    for number, row in enumerate(rows):
        axis.annotate(f"w {row['fairness_weight']:g} ({row['seeds']} seeds): {row['points']:+.1f} pts",
                      (row["jain"], row["speedup"]),
                      textcoords="offset points", xytext=(-30, 8 if number % 2 else -22), fontsize=7,
                      color="tab:blue")
        axis.plot([row["jain"]] * 2, [row["speedup_min"], row["speedup"]], color="tab:blue", alpha=0.3)
    for row in later:
        axis.plot(row["jain"], row["speedup"], "*", color="tab:orange", markersize=12,
                  label=f"time-fair w {row['fairness_weight']:g}, later run ({row['file']})")
        axis.annotate(f"{row['speedup']:.2f}x, {row['points']:+.1f} pts", (row["jain"], row["speedup"]),
                      textcoords="offset points", xytext=(6, -12), fontsize=8, color="tab:orange")
        axis.plot([row["jain"]] * 2, [row["speedup_min"], row["speedup"]], color="tab:orange", alpha=0.3)
    peers = rows[0]["peers"]
    for policy, (marker, color) in {"random": ("s", "tab:red"), "round-robin": ("^", "tab:green")}.items():
        if policy in peers:
            axis.plot(peers[policy]["jain"], peers[policy]["speedup"], marker, color=color, markersize=8,
                      label=policy)
    axis.axhline(3.0, color="tab:red", linewidth=0.8, linestyle=":", label="3x faster than random")
    axis.axvline(0.8, color="black", linewidth=0.8, linestyle=":", label="Jain 0.8")
    axis.set_xlabel("Jain's index of device participation (mean over seeds and tasks)")
    axis.set_ylabel("speed-up to every task's target vs random (mean; bar: worst seed)")
    axis.set_xlim(0.4, 1.02)
    axis.set_ylim(0, max(4.0, max(p["speedup_bound"] for p in limit if p["jain"] >= 0.5) * 1.05))
    counts = sorted({row["seeds"] for row in rows})
    seeds = f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else f"{counts[0]}"
    axis.set_title(f"with training (bench_sched_effect.py, {seeds} seeds): what the weight buys",
                   fontsize=10)
    axis.legend(fontsize=7, loc="lower left")


def optimum_points(path: Path) -> list[dict]:
    """The exact ceilings of an analyse_sched_periods.py --optimum output, per Jain level it solved."""
    periods = json.loads(path.read_text().splitlines()[0])
    return [{"jain": row["jain"], "seeds": len(row["speedup_optimum_per_seed"]),
             "speedup_optimum": row["speedup_optimum"], "speedup_optimum_mean_jain": row["speedup_optimum_mean_jain"]}
            for row in periods["bound"] if "speedup_optimum" in row]


def effect_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        run = json.loads(path.read_text().splitlines()[0])
        summary = run["summary"]
        line = summary["time-fair"]
        rows.append({"file": path.name, "fairness_weight": run["fairness_weight"], "seeds": len(run["seeds"]),
                     "speedup": line["speedup_vs_random_mean"], "speedup_min": line["speedup_vs_random_min"],
                     "points": line["accuracy_points_vs_random_mean"], "jain": line["jain_mean"],
                     "peers": {policy: {"jain": summary[policy]["jain_mean"],
                                        "speedup": summary[policy]["speedup_vs_random_mean"]}
                               for policy in ("random", "round-robin") if policy in summary}})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write the figure (PNG) here")
    parser.add_argument("--effect", type=Path, nargs="*", default=[],
                        help="bench_sched_effect.py JSON outputs at several weights (the second panel)")
    parser.add_argument("--effect-later", type=Path, nargs="*", default=[],
                        help="bench_sched_effect.py outputs of later runs (other code), marked apart on that panel")
    parser.add_argument("--periods", type=Path, metavar="FILE",
                        help="an analyse_sched_periods.py --optimum output: its exact ceilings on the second panel")
    parser.add_argument("--reuse", type=Path, metavar="REPORT",
                        help="take the sweep and the bound from this earlier output (same options), redo the panels")
    args = parser.parse_args(argv)
    if args.reuse:
        report = json.loads(args.reuse.read_text().splitlines()[0])
        if any("speedup_bound_distinct" not in row for row in report["bound"]):  # an output from before it
            report["bound"] = bound(report["seeds"], report["rounds"], report["tasks"],
                                    [row["jain"] for row in report["bound"]])
            for row in report["bound"]:
                row["round_speedup_vs_random"] = round(report["random"]["round_seconds"] / row["round_seconds"], 2)
        report["effect"], report["effect_later"] = effect_rows(args.effect), effect_rows(args.effect_later)
        report["optimum"] = optimum_points(args.periods) if args.periods else report.get("optimum", [])
        if args.plot:
            plot(args.plot, report)
        print(json.dumps(report))
        return report
    started = time.perf_counter()
    report = {"benchmark": "sched_tradeoff", "peer": "random", "devices": 40, "tasks": args.tasks,
              "rounds": args.rounds, "seeds": args.seeds}
    report["time-fair"] = [{"weight": weight, **measure("time-fair", weight, args.seeds, args.rounds, args.tasks)}
                           for weight in WEIGHTS]
    for policy in ("random", "round-robin", "fastest"):
        report[policy] = measure(policy, 0.0, args.seeds, args.rounds, args.tasks)
    report["bound"] = bound(args.seeds, args.rounds, args.tasks, (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0))
    for row in report["time-fair"] + report["bound"]:
        row["round_speedup_vs_random"] = round(report["random"]["round_seconds"] / row["round_seconds"], 2)
    report["server_seconds"] = effect.SERVER_SECONDS
    report["collection_window"] = effect.COLLECTION_WINDOW
    report["effect"] = effect_rows(args.effect)
    report["effect_later"] = effect_rows(args.effect_later)
    report["optimum"] = optimum_points(args.periods) if args.periods else []
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.plot:
        plot(args.plot, report)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
