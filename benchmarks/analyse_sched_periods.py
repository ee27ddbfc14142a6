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

`bound` is plot_sched_tradeoff.py's bound at Jain 0.7, 0.8, 0.9 over the same seeds: the speed-up to every task's
target against random with as many rounds as random, every round costing the server SERVER_SECONDS, for rounds that
are all equally slow (`homogeneous`), for the same participation rates as whole turns in rounds of distinct devices
(`distinct`, a lower bound on those turns' rounds) and for a real schedule of those turns (`packed`: one task alone,
no waits; achievable, not a bound).

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
            "distinct_bound": round(tradeoff.distinct_lower_bound(seconds, counts, effect.PER_ROUND), 2),
            "packed": round(tradeoff.schedule_mean(seconds, tradeoff.pack(seconds, counts, effect.PER_ROUND)), 2),
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


def ratio_mean(rows: list[dict], top: str, bottom: str) -> float:
    return round(statistics.mean(row[top] / row[bottom] for row in rows), 3)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--fairness-weight", type=float, default=effect.DEFAULT_FAIRNESS_WEIGHT)
    parser.add_argument("--optimum", type=float, nargs="+", default=[], metavar="JAIN",
                        choices=JAIN_LEVELS, help="also the exact least-time schedules at these Jain levels (a "
                                                  "mixed-integer program per task and level: up to a minute each)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.rounds < effect.SMOOTHING or args.tasks < 1:
        parser.error("--seeds and --tasks must be >= 1 and --rounds >= 3")
    started = time.perf_counter()
    periods = [analyse_seed(seed, args.fairness_weight, args.rounds, args.tasks) for seed in range(args.seeds)]
    bounds = tradeoff.bound(args.seeds, args.rounds, args.tasks, JAIN_LEVELS, optimum=args.optimum)
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
        "bound": {str(row["jain"]): {"homogeneous": row["speedup_bound"], "distinct": row["speedup_bound_distinct"],
                                     "packed": row["speedup_packed"],
                                     **({"optimum": row["speedup_optimum"],
                                         "optimum_mean_jain": row["speedup_optimum_mean_jain"]}
                                        if "speedup_optimum" in row else {})} for row in bounds},
    }
    report = {"benchmark": "sched_periods", "peer": "random", "fairness_weight": args.fairness_weight,
              "rounds": args.rounds, "tasks": args.tasks, "seeds": periods,
              "bound": bounds, "summary": summary,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
