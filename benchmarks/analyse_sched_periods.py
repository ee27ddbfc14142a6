"""Where `time-fair` loses against the trade-off bound, from bench_sched_effect.py's own simulated runtime (its fleet,
draws, time model and learning periods, without training; one JSON line).

Per seed, `time-fair` (at `--fairness-weight`) and `random` run `--rounds` rounds per task with the three tasks
sharing the pool, and `time-fair` once more with each task alone on the pool (no other task holds devices). From the
periods' decisions and each task's participation ledger after `--rounds` rounds:

- `decisions_by_tasks`: how many tasks each period's joint decision served (the joint solver can only trade devices
  between tasks that decide together);
- per task: Jain's index of its ledger; its mean round (the slowest device of each round); `homogeneous`: the mean
  round if every round's devices were equally slow with the same ledger (sum of turns x seconds / devices per round
  / rounds: what the bound of plot_sched_tradeoff.py counts); `distinct_bound`: a lower bound for *any* schedule of
  that ledger whose rounds hold distinct devices (`distinct_lower_bound`); `packed`: a schedule of that ledger built
  knowing all of it in advance (`pack`: feasible, so what a clairvoyant packing of the same turns achieves);
  `bound_at_jain`: the homogeneous bound at the task's own Jain (another ledger of that Jain may be cheaper);
  `alone`: the same task's mean round and Jain without the other tasks;
- per seed, the speed-up per round against `random` in the same run: random's longest time per round over the
  tasks (every wait included) / time-fair's (what the time to every task's target scales with, rounds being equal).

`bound` then gives, for Jain levels 0.7, 0.8, 0.9 and each seed, three speed-ups to every task's target against
random (as plot_sched_tradeoff.py: with as many rounds as random, every round costing the server SERVER_SECONDS):
`homogeneous` (that script's bound), `distinct` (the same optimal participation rates as whole turns over
`--rounds` rounds, each round's devices distinct: the distinct-device lower bound of that ledger) and `packed` (a
real schedule of that ledger, one task alone, no waits: achievable, not a bound).

    python benchmarks/analyse_sched_periods.py [--seeds 10] [--fairness-weight 2] [--rounds 40]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sched_effect as effect  # the benchmarks next to this file
import plot_sched_tradeoff as tradeoff

from fedtask_operator.core.scheduling import jain_index

JAIN_LEVELS = (0.7, 0.8, 0.9)


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


def wall_per_round(run: effect.Run, rounds: int) -> float:
    return run.curve[rounds - 1][0] / rounds


def analyse_seed(seed: int, weight: float, rounds: int, task_count: int) -> dict:
    nodes, speeds, tasks = tradeoff.draws(seed, task_count)
    names = [node["metadata"]["name"] for node in nodes]
    decisions: list = []
    shared = effect.simulate("time-fair", tasks, nodes, speeds, rounds, seed, weight, train=False,
                             decisions=decisions)
    peer = effect.simulate("random", tasks, nodes, speeds, rounds, seed, weight, train=False)
    sizes = [sum(1 for devices in chosen.values() if devices) for _, chosen in decisions]
    per_task = []
    for index, (task, run) in enumerate(zip(tasks, shared)):
        seconds = np.array([len(s) * effect.SECONDS_PER_SAMPLE / v for s, v in zip(task.shards, speeds)])
        counts = np.array([run.ledger_at_rounds.get(name, 0) for name in names], dtype=int)
        jain = jain_index(counts.tolist())
        alone = effect.simulate("time-fair", [task], nodes, speeds, rounds, seed, weight, train=False)[0]
        alone_counts = [alone.ledger_at_rounds.get(name, 0) for name in names]
        per_task.append({
            "task": index, "dataset": task.dataset, "jain": round(jain, 3),
            "round_seconds": round(statistics.mean(run.round_seconds[:rounds]), 2),
            "homogeneous": round(float((counts * seconds).sum()) / (effect.PER_ROUND * rounds), 2),
            "distinct_bound": round(distinct_lower_bound(seconds, counts, effect.PER_ROUND), 2),
            "packed": round(schedule_mean(seconds, pack(seconds, counts, effect.PER_ROUND)), 2),
            "bound_at_jain": round(tradeoff.least_mean_round(seconds, effect.PER_ROUND, jain), 2),
            "wall_per_round": round(wall_per_round(run, rounds), 2),
            "random_wall_per_round": round(wall_per_round(peer[index], rounds), 2),
            "alone": {"round_seconds": round(statistics.mean(alone.round_seconds[:rounds]), 2),
                      "jain": round(jain_index(alone_counts), 3),
                      "bound_at_jain": round(tradeoff.least_mean_round(seconds, effect.PER_ROUND,
                                                                       jain_index(alone_counts)), 2)},
        })
    return {
        "seed": seed, "decisions": len(decisions),
        "decisions_by_tasks": {str(n): sizes.count(n) for n in sorted(set(sizes))},
        "tasks": per_task,
        "speedup_per_round": round(max(t["random_wall_per_round"] for t in per_task)
                                   / max(t["wall_per_round"] for t in per_task), 3),
    }


def bound_seed(seed: int, rounds: int, task_count: int, levels=JAIN_LEVELS) -> dict:
    nodes, speeds, tasks = tradeoff.draws(seed, task_count)
    peer = effect.simulate("random", tasks, nodes, speeds, rounds, seed, 0.0, train=False)
    walls = max(wall_per_round(run, rounds) for run in peer)
    rows = {}
    for level in levels:
        homogeneous, distinct, packed = [], [], []
        for task in tasks:
            seconds = np.array([len(s) * effect.SECONDS_PER_SAMPLE / v for s, v in zip(task.shards, speeds)])
            least, rates = tradeoff.least_rates(seconds, effect.PER_ROUND, level)
            if rates is None:
                raise SystemExit(f"no participation reaches Jain {level}")
            counts = whole_turns(rates, rounds)
            homogeneous.append(least)
            distinct.append(distinct_lower_bound(seconds, counts, effect.PER_ROUND))
            packed.append(schedule_mean(seconds, pack(seconds, counts, effect.PER_ROUND)))
        rows[str(level)] = {name: round(walls / max(b + effect.SERVER_SECONDS for b in values), 3)
                            for name, values in (("homogeneous", homogeneous), ("distinct", distinct),
                                                 ("packed", packed))}
    return rows


def ratio_mean(rows: list[dict], top: str, bottom: str) -> float:
    return round(statistics.mean(row[top] / row[bottom] for row in rows), 3)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--fairness-weight", type=float, default=effect.DEFAULT_FAIRNESS_WEIGHT)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.rounds < effect.SMOOTHING or args.tasks < 1:
        parser.error("--seeds and --tasks must be >= 1 and --rounds >= 3")
    started = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    periods = [analyse_seed(seed, args.fairness_weight, args.rounds, args.tasks) for seed in seeds]
    bounds = {seed: bound_seed(seed, args.rounds, args.tasks) for seed in seeds}
    task_rows = [row for seed in periods for row in seed["tasks"]]
    by_tasks: dict[str, int] = {}
    for seed in periods:
        for size, count in seed["decisions_by_tasks"].items():
            by_tasks[size] = by_tasks.get(size, 0) + count
    decisions = sum(by_tasks.values())
    summary = {
        "decisions_by_tasks": by_tasks,
        "joint_share": round(sum(c for size, c in by_tasks.items() if int(size) > 1) / max(decisions, 1), 3),
        "round_over_packed": ratio_mean(task_rows, "round_seconds", "packed"),
        "packed_over_distinct_bound": ratio_mean(task_rows, "packed", "distinct_bound"),
        "distinct_bound_over_homogeneous": ratio_mean(task_rows, "distinct_bound", "homogeneous"),
        "homogeneous_over_bound_at_jain": ratio_mean(task_rows, "homogeneous", "bound_at_jain"),
        "round_over_bound_at_jain": ratio_mean(task_rows, "round_seconds", "bound_at_jain"),
        "alone_round_over_bound_at_its_jain": round(statistics.mean(
            row["alone"]["round_seconds"] / row["alone"]["bound_at_jain"] for row in task_rows), 3),
        "jain_mean": round(statistics.mean(row["jain"] for row in task_rows), 3),
        "speedup_per_round_mean": round(statistics.mean(seed["speedup_per_round"] for seed in periods), 3),
        "bound": {str(level): {name: round(statistics.mean(bounds[s][str(level)][name] for s in seeds), 3)
                               for name in ("homogeneous", "distinct", "packed")} for level in JAIN_LEVELS},
    }
    report = {"benchmark": "sched_periods", "peer": "random", "fairness_weight": args.fairness_weight,
              "rounds": args.rounds, "tasks": args.tasks, "seeds": periods,
              "bound_per_seed": {str(s): bounds[s] for s in seeds}, "summary": summary,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
