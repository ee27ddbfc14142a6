"""Quality of joint device selection: the period's cost against the exhaustive optimum on small instances (one JSON
line; a figure with --plot).

Random fleets of 6-12 device nodes (CPU sizes, GPUs, observed times for about half of the devices) with 3 competing
node-device tasks under `time-fair` (random pool selectors, 1-3 devices per round, random participation histories,
fairness weights 0-5). Where all three tasks fit, exhaustive search over disjoint device sets gives the least period
cost (core/scheduling/objective.py, computed here from the scheduler's own estimates and participation, not from its
prices), and every solver is measured against it, gap = cost / optimum - 1:
- `select_devices`: the scheduler as shipped (joint.py: each task's own optimum when they do not collide, else branch
  and bound over round-time limits with exact min-cost assignments);
- `local-search`: joint.py's heuristic alone (the incumbent the exact search starts from, and what it returns when
  it runs out of leaves);
- `greedy`: node_devices' matching heuristic, used for groups of more than 8 competing tasks or 2000 candidates;
- `random`: the random policy's devices, costed the same way (the peer).

    python benchmarks/bench_sched_quality.py [--instances 300] [--seed 0] [--plot docs/sched-optimality-gap.png]
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

from fedtask_operator.core.scheduling import DeviceRequest, select_devices
from fedtask_operator.core.scheduling.fleet import build_fleet
from fedtask_operator.core.scheduling.joint import _Joint
from fedtask_operator.core.scheduling.node_candidates import node_candidates
from fedtask_operator.core.scheduling.node_devices import _greedy
from fedtask_operator.core.scheduling.period import Period
from fedtask_operator.core.scheduling.synthetic import make_node

SOLVERS = ("select_devices", "local-search", "greedy", "random")


def random_instance(rng: random.Random):
    count = rng.randint(6, 12)
    nodes = [make_node(f"n{i:02d}", cpu=str(rng.choice((1, 2, 4, 8, 16))), gpus=int(rng.random() < 0.25),
                       labels={"fedtask.io/pool": f"p{rng.randrange(3)}"}) for i in range(count)]
    requests = []
    for t in range(3):
        pools = rng.sample(["p0", "p1", "p2"], rng.randint(2, 3))
        requests.append(DeviceRequest(
            task=f"ns/t{t}", per_round=rng.randint(1, 3), requests={"cpu": "100m"}, node_devices=True,
            policy="time-fair", fairness_weight=rng.choice((0.0, 0.5, 1.0, 2.0, 5.0)), round=rng.randint(1, 30),
            train_seconds={f"n{i:02d}": round(rng.uniform(1, 20), 2) for i in range(count) if rng.random() < 0.5},
            participation={f"n{i:02d}": rng.randint(0, 8) for i in range(count)},
            selector={"matchExpressions": [{"key": "fedtask.io/pool", "operator": "In", "values": pools}]}))
    return nodes, requests


class Instance:
    """The scheduler's view of one instance (its estimates, participation, time scales) and the exact cost."""

    def __init__(self, nodes, requests):
        self.nodes, self.requests = nodes, requests
        self.period = Period(build_fleet(nodes, []))
        self.options = [node_candidates(self.period, self.period.resolve(r)) for r in requests]

    def cost(self, chosen: dict[str, list[int]]) -> float:
        total = 0.0
        for option in self.options:
            nodes = chosen[option.key]
            universe = option.task.matched
            before = option.participation[universe]
            after = option.participation.copy()
            after[nodes] += 1
            after = after[universe]
            weight = option.request.fairness_weight
            unfairness = len(after) * after.var() / (2 * option.request.per_round * max(1.0, before.mean()))
            total += max(option.est[n] for n in nodes) / option.tau + weight * unfairness
        return total

    def optimum(self) -> float:
        best = float("inf")
        options = self.options

        def search(t: int, used: frozenset, chosen: dict) -> None:
            nonlocal best
            if t == len(options):
                best = min(best, self.cost(chosen))
                return
            free = [int(n) for n in options[t].candidates if int(n) not in used]
            for combo in itertools.combinations(free, options[t].request.per_round):
                search(t + 1, used | set(combo), {**chosen, options[t].key: list(combo)})

        search(0, frozenset(), {})
        return best

    def chosen_by(self, assignment) -> dict[str, list[int]]:
        index = self.period.fleet.index
        return {key: [index[slot.node] for slot in task.devices] for key, task in assignment.tasks.items()}

    def solve(self, solver: str) -> dict[str, list[int]]:
        if solver == "select_devices":
            return self.chosen_by(select_devices(self.requests, self.nodes, []))
        if solver == "random":
            return self.chosen_by(select_devices([DeviceRequest(**{**r.__dict__, "policy": "random"})
                                                  for r in self.requests], self.nodes, []))
        if solver == "greedy":
            return _greedy(self.options)
        nodes = np.unique(np.concatenate([o.candidates for o in self.options]))
        tasks = [option.options(nodes) for option in self.options]
        solution = _Joint(tasks).local_search([task.own_best()[1] for task in tasks])
        return {key: [int(nodes[i]) for i in devices] for key, devices in solution.chosen.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="write the figure of the gaps (PNG) here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = random.Random(args.seed)
    gaps = {solver: [] for solver in SOLVERS}
    seconds = {solver: [] for solver in SOLVERS}
    optimal_claims, feasible = 0, 0
    for _ in range(args.instances):
        nodes, requests = random_instance(rng)
        shipped = select_devices(requests, nodes, [])
        if any(task.waiting_reason for task in shipped.tasks.values()):
            continue  # not all three fit: the instance says nothing about the cost
        feasible += 1
        optimal_claims += all(task.optimal for task in shipped.tasks.values())
        instance = Instance(nodes, requests)
        best = instance.optimum()
        for solver in SOLVERS:
            begun = time.perf_counter()
            chosen = instance.solve(solver)
            seconds[solver].append(time.perf_counter() - begun)
            gaps[solver].append(max(0.0, instance.cost(chosen) / best - 1) if best > 0 else 0.0)
    report = {"benchmark": "sched_quality", "peer": "random", "instances": args.instances,
              "instances_feasible": feasible, "devices": "6-12", "tasks": 3,
              "select_devices_claimed_optimal": optimal_claims}
    for solver in SOLVERS:
        values = sorted(gaps[solver])
        report[solver] = {
            "gap_mean": round(statistics.mean(values), 5),
            "gap_p95": round(values[int(0.95 * (len(values) - 1))], 5),
            "gap_max": round(values[-1], 5),
            "share_optimal": round(sum(gap <= 1e-9 for gap in values) / len(values), 4),
            "ms_mean": round(1000 * statistics.mean(seconds[solver]), 3),
        }
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.plot:
        plot(args.plot, gaps, feasible)
    print(json.dumps(report))
    return report


def plot(path: Path, gaps: dict, feasible: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for solver, color in zip(SOLVERS, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        values = np.sort(np.asarray(gaps[solver])) * 100
        shares = np.arange(1, len(values) + 1) / len(values)
        axis.step(np.r_[0, values], np.r_[0, shares], where="post", color=color, label=solver)
    axis.set_xscale("symlog", linthresh=0.1)
    axis.set_xlabel("period cost above the exhaustive optimum (%)")
    axis.set_ylabel("share of instances")
    axis.set_title(f"joint solver vs exhaustive search: {feasible} instances, 6-12 devices, 3 tasks", fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
