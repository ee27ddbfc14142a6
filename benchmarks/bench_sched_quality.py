"""Quality of joint selection: period time vs the exhaustive optimum on small instances, fairness beside it
(one JSON line).

Many random fleets of 6-12 device nodes (CPU sizes, GPUs, observed per-device times) with 3 competing node-device
tasks (random pool selectors, 1-3 devices per round). For the first period the exhaustive search over disjoint device
sets gives the optimal period time (the largest, over tasks, of the slowest selected device). Then 30 periods are
simulated per fleet, participation updated after each, to report Jain's fairness index per policy and the mean period
time against the (fairness-blind) optimum. Peer: the `random` policy on the same fleets.

    python benchmarks/bench_sched_quality.py [--fleets 200] [--periods 30]
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time

from fedtask_operator.core.scheduling import DeviceRequest, jain_index, select_devices
from fedtask_operator.core.scheduling.fleet import build_fleet
from fedtask_operator.core.scheduling.node_candidates import node_candidates
from fedtask_operator.core.scheduling.period import Period
from fedtask_operator.core.scheduling.synthetic import make_node

POLICIES = ("time-fair", "fastest", "random", "round-robin")


def random_instance(rng: random.Random):
    count = rng.randint(6, 12)
    nodes = [make_node(f"n{i:02d}", cpu=str(rng.choice((1, 2, 4, 8, 16))), gpus=int(rng.random() < 0.25),
                       labels={"fedtask.io/pool": f"p{rng.randrange(3)}"}) for i in range(count)]
    tasks = []
    for t in range(3):
        pools = rng.sample(["p0", "p1", "p2"], rng.randint(2, 3))
        observed = {f"n{i:02d}": round(rng.uniform(1, 20), 2) for i in range(count) if rng.random() < 0.5}
        tasks.append(dict(task=f"ns/t{t}", per_round=rng.randint(1, 3), requests={"cpu": "100m"},
                          node_devices=True, train_seconds=observed,
                          selector={"matchExpressions": [{"key": "fedtask.io/pool", "operator": "In",
                                                          "values": pools}]}))
    return nodes, tasks


def optimum(requests, estimates) -> float:
    """Exhaustive search (with branch-and-bound) over disjoint device sets."""
    best = float("inf")
    options = [sorted(estimates[t], key=estimates[t].get) for t in range(len(requests))]

    def search(t, used, worst):
        nonlocal best
        if worst >= best:
            return
        if t == len(requests):
            best = worst
            return
        free = [n for n in options[t] if n not in used]
        for chosen in itertools.combinations(free, requests[t].per_round):
            slowest = max(estimates[t][n] for n in chosen)
            search(t + 1, used | set(chosen), max(worst, slowest))

    search(0, frozenset(), 0.0)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleets", type=int, default=200)
    parser.add_argument("--periods", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = random.Random(args.seed)
    first_ratio = {p: [] for p in POLICIES}
    mean_ratio = {p: [] for p in POLICIES}
    fairness = {p: [] for p in POLICIES}
    feasible = 0
    for _ in range(args.fleets):
        nodes, specs = random_instance(rng)
        for policy in POLICIES:
            participation = {spec["task"]: {} for spec in specs}
            periods = []
            for period in range(1, args.periods + 1):
                requests = [DeviceRequest(policy=policy, round=period, participation=dict(participation[s["task"]]),
                                          **s) for s in specs]
                result = select_devices(requests, nodes, [])
                if period == 1:
                    if any(t.waiting_reason for t in result.tasks.values()):
                        break  # not all three fit: the instance says nothing about period time
                    # the scheduler's own estimates of every candidate, to search over
                    estimates = [candidate_estimates(request, nodes) for request in requests]
                    best = optimum(requests, estimates)
                    if policy == POLICIES[0]:
                        feasible += 1
                    first_ratio[policy].append(result.period_seconds / best)
                periods.append(result.period_seconds / best)
                for key, task in result.tasks.items():
                    for slot in task.devices:
                        participation[key][slot.device] = participation[key].get(slot.device, 0) + 1
            if periods:
                mean_ratio[policy].append(statistics.mean(periods))
                for request in specs:
                    candidates = candidate_estimates(DeviceRequest(**request), nodes)
                    fairness[policy].append(jain_index([participation[request["task"]].get(n, 0)
                                                        for n in candidates]))
    report = {"benchmark": "sched_quality", "peer": "random", "fleets": args.fleets, "fleets_feasible": feasible,
              "periods": args.periods, "nodes": "6-12", "tasks": 3}
    for policy in POLICIES:
        ratios = first_ratio[policy]
        report[policy] = {
            "period_vs_optimum_mean": round(statistics.mean(ratios), 4),
            "period_vs_optimum_max": round(max(ratios), 4),
            "share_within_10pct": round(sum(r <= 1.1 + 1e-9 for r in ratios) / len(ratios), 4),
            "period_vs_optimum_over_periods": round(statistics.mean(mean_ratio[policy]), 4),
            "jain_index_mean": round(statistics.mean(fairness[policy]), 4),
        }
    report["time_fair_period_vs_random"] = round(
        report["time-fair"]["period_vs_optimum_over_periods"] / report["random"]["period_vs_optimum_over_periods"], 4)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))
    return report


def candidate_estimates(request: DeviceRequest, nodes) -> dict[str, float]:
    """The scheduler's own estimate for every node the task may use (the same numbers it optimises over)."""
    period = Period(build_fleet(nodes, []))
    options = node_candidates(period, period.resolve(request))
    names = period.fleet.names
    return {names[n]: float(options.est[n]) for n in options.candidates}


if __name__ == "__main__":
    main()
