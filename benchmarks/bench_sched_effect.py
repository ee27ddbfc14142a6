"""Effect of the scheduling policy on the time until every task reaches its target accuracy (one JSON line).

Several tasks (`--tasks`, default 3) share one pool of devices: the fleet's nodes (`--fleet`, default
benchmarks/fleets/speed-10x-40.yaml: 40 nodes, 4 at 10x, 12 at 3x, 24 at 1x). Device i holds shard i of every
task's dataset (Dirichlet(0.3) label skew over a slice of MNIST, or over digits), trains at most one task at a time,
and takes samples x SECONDS_PER_SAMPLE / speed simulated seconds for a round. A node's speed is its
`fedtask.io/speed` label (a number, relative), else its GPU's speed from the product label (scheduling/estimates.py),
else its allocatable CPU count.

Each task trains a real MLP with the worker's own code (fedtask_worker.training: local SGD, FedAvg, evaluation),
PER_ROUND devices per round. The runtime is simulated event by event with the runtimes' own learning periods
(core/scheduling/collection.py: the collection window, then one joint `select_devices` for every task that needs
devices): a round ends when its last device returns, then the server needs SERVER_SECONDS (aggregate, adjust) and the
task needs devices again. The scheduler learns each device's time from the observed durations (the runtimes' EWMA) and
counts every turn in the participation ledger, as the planner does.

Per seed (one draw of shards, speeds placement and initial models) `random` runs `--rounds` rounds per task first: a
task's target is TARGET_SHARE of random's final accuracy on it (the peer), and random's simulated time is the budget.
Every other policy runs at least as many rounds, and goes on (up to ROUND_CAP times as many) while a task has not
reached its target and the budget is not spent: a policy with cheaper rounds may use the time it saved.
`seconds_to_target` is the simulated time at which every task's running mean accuracy (SMOOTHING rounds) reached its
target, null when some task never did within the budget; `final_accuracy` is each task's mean accuracy over rounds
`--rounds`-FINAL_WINDOW+1 .. `--rounds` (the same rounds as random's: what a round is worth, not how many fit);
`jain` is Jain's index of the devices' participation over those rounds, the mean over the tasks;
`rounds_to_target` each task's rounds until its running mean reached its target (null: never).

    python benchmarks/bench_sched_effect.py [--fleet FILE] [--tasks 3] [--seeds 10] [--policy time-fair ...]
        [--rounds 40] [--fairness-weight W] [--quick] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from fedtask_operator.core.scheduling import DeviceRequest, jain_index, update_train_estimate
from fedtask_operator.core.scheduling.collection import (
    DEFAULT_COLLECTION_WINDOW_SECONDS,
    SchedulingConfig,
    decide_period,
)
from fedtask_operator.core.scheduling.estimates import gpu_speed, is_gpu_resource
from fedtask_operator.core.scheduling.objective import DEFAULT_FAIRNESS_WEIGHT
from fedtask_operator.core.scheduling.synthetic import make_node, make_train_pod
from fedtask_worker.datasets import load_dataset
from fedtask_worker.models import build_model
from fedtask_worker.partition import all_shards
from fedtask_worker.training import aggregate_states, evaluate, load_model_state, model_state, train_local

FLEETS = Path(__file__).resolve().parent / "fleets"
DEFAULT_FLEET = FLEETS / "speed-10x-40.yaml"
SPEED_LABEL = "fedtask.io/speed"
POLICIES = ("time-fair", "random", "round-robin", "fastest")
SECONDS_PER_SAMPLE = 1.0  # simulated seconds per training sample on a speed-1 device (a round: minutes)
SERVER_SECONDS = 5.0  # aggregation and server-side adjustment after each round
COLLECTION_WINDOW = DEFAULT_COLLECTION_WINDOW_SECONDS  # the runtimes' default
PER_ROUND = 5
TARGET_SHARE = 0.98
SMOOTHING = 3
FINAL_WINDOW = 5
ROUND_CAP = 3  # a policy may run up to this many times random's rounds within random's time
TRAIN_SLICE = 6000  # MNIST training samples per task (tasks use disjoint slices)
VAL_SAMPLES = 2000
LEARNING_RATE = 0.1
TASK_DATASETS = ("mnist", "mnist", "digits")  # task i uses TASK_DATASETS[i % 3]
LOCAL_EPOCHS = {"mnist": 2, "digits": 10}  # digits shards hold ~36 samples: more passes for a useful update


# --------------------------------------------------------------------------------------------------------------------
# The fleet


def default_fleet() -> list[dict]:
    """The default fleet file's nodes (how it was made): 40 device nodes with a 10x speed spread, 4 at 10x, 12 at
    3x, 24 at 1x (the CPU count says the same)."""
    speeds = [10] * 4 + [3] * 12 + [1] * 24
    return [make_node(f"dev-{i:02d}", cpu=str(speed), labels={SPEED_LABEL: str(speed)})
            for i, speed in enumerate(speeds)]


def load_fleet(path: Path) -> tuple[list[dict], list[float]]:
    """Device nodes from a `kubectl get nodes -o yaml|json` dump (a List or a list), and each one's speed."""
    data = yaml.safe_load(path.read_text())
    nodes = data.get("items") if isinstance(data, dict) else data
    if not isinstance(nodes, list) or not nodes:
        raise SystemExit(f"--fleet {path}: expected a List of Node objects")
    return nodes, [node_speed(node) for node in nodes]


def node_speed(node: dict) -> float:
    labels = node["metadata"].get("labels") or {}
    if SPEED_LABEL in labels:
        return float(labels[SPEED_LABEL])
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    if any(is_gpu_resource(name) and str(value) not in ("0", "") for name, value in allocatable.items()):
        return gpu_speed(labels)
    cpu = str(allocatable.get("cpu", "1"))
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


# --------------------------------------------------------------------------------------------------------------------
# Tasks


@dataclasses.dataclass
class TaskData:
    name: str
    dataset: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    shards: tuple
    input_shape: tuple
    classes: int


def build_tasks(count: int, devices: int, seed: int, train_slice: int) -> list[TaskData]:
    loaded = {}
    tasks = []
    for index in range(count):
        name = TASK_DATASETS[index % len(TASK_DATASETS)]
        data = loaded.get(name) or loaded.setdefault(name, load_dataset(name))
        if name == "mnist":
            start = (index // len(TASK_DATASETS) * 2 + index % 2) * train_slice % len(data.y_train)
            x, y = data.x_train[start:start + train_slice], data.y_train[start:start + train_slice]
        else:
            x, y = data.x_train, data.y_train
        shards = all_shards(y, "dirichlet", devices, seed=seed * 100 + index, alpha=0.3)
        tasks.append(TaskData(f"bench/task-{index}", name, x, y, data.x_val[:VAL_SAMPLES], data.y_val[:VAL_SAMPLES],
                              shards, data.input_shape, data.num_classes))
    return tasks


# --------------------------------------------------------------------------------------------------------------------
# The simulated runtime


@dataclasses.dataclass
class Run:
    """One task under one policy."""

    data: TaskData
    model: torch.nn.Module
    state: dict
    rounds: int  # at least this many rounds
    round: int = 1
    target: float | None = None  # then on while below it,
    budget: float = math.inf  # within this simulated time,
    cap: int = 0  # and at most this many rounds
    ledger_at_rounds: dict = dataclasses.field(default_factory=dict)  # participation after `rounds` rounds
    ready_at: float = 0.0  # when it needs devices (after the server's work)
    period_time: float | None = None  # the last period it took part in without getting devices
    devices: dict = dataclasses.field(default_factory=dict)  # node index -> finish time (this round)
    returned: dict = dataclasses.field(default_factory=dict)
    participation: dict = dataclasses.field(default_factory=dict)
    estimates: dict = dataclasses.field(default_factory=dict)
    curve: list = dataclasses.field(default_factory=list)
    round_seconds: list = dataclasses.field(default_factory=list)

    @property
    def done(self) -> bool:
        if self.round <= self.rounds:
            return False
        if self.target is None or self.round > self.cap or self.ready_at >= self.budget:
            return True
        return time_to(self.curve, self.target) is not None

    @property
    def key(self) -> str:
        return self.data.name


def simulate(policy: str, tasks: list[TaskData], nodes: list[dict], speeds: list[float], rounds: int, seed: int,
             weight: float, train: bool = True, targets: list[float] | None = None,
             budget: float = math.inf, decisions: list | None = None) -> list[Run]:
    """Every task's run under `policy`; `decisions`, when given, receives each period's (time, {task key: the node
    indices it got}) for the tasks in that period's decision (analyse_sched_periods.py reads them)."""
    names = [node["metadata"]["name"] for node in nodes]
    runs = []
    for index, task in enumerate(tasks):
        model = build_model("mlp", task.input_shape, task.classes, seed=seed * 10 + index)
        runs.append(Run(task, model, state_copy(model), rounds, target=targets[index] if targets else None,
                        budget=budget, cap=ROUND_CAP * rounds))
    config = SchedulingConfig(collection_window=COLLECTION_WINDOW, fairness_weight=weight)
    samples = [[len(shard) for shard in task.shards] for task in tasks]
    clock, period = 0.0, 0
    for _ in range(100000):
        busy = [make_train_pod(run.key, names[node]) for run in runs for node, end in run.devices.items()
                if node not in run.returned]
        waiting = [run for run in runs if not run.done and not run.devices and run.ready_at <= clock]
        due_time = math.inf
        if waiting:
            requests = [DeviceRequest(
                task=run.key, per_round=PER_ROUND, requests={"cpu": "100m"}, node_devices=True, policy=policy,
                round=run.round, participation=dict(run.participation), train_seconds=dict(run.estimates),
                samples={names[i]: samples[tasks.index(run.data)][i] for i in range(len(names))},
                waiting_since=run.ready_at, ready_since=max(run.ready_at, run.period_time or 0.0))
                for run in waiting]
            active = [run.key for run in runs if not run.done]
            decision = decide_period(requests, nodes, busy, clock, active=active, config=config, period=period + 1)
            if decision.due:
                period += 1
                if decisions is not None:
                    decisions.append((clock, {run.key: [names.index(slot.node) for slot in
                                                        decision.assignment.tasks[run.key].devices]
                                              for run in waiting}))
                for run in waiting:
                    got = decision.assignment.tasks[run.key]
                    if not got.devices:
                        run.period_time = clock
                        continue
                    index = tasks.index(run.data)
                    for slot in got.devices:
                        node = names.index(slot.node)
                        run.devices[node] = clock + samples[index][node] * SECONDS_PER_SAMPLE / speeds[node]
                    run.round_start = clock
            else:
                due_time = clock + decision.retry_after
        events = [end for run in runs for node, end in run.devices.items() if node not in run.returned]
        events += [run.ready_at for run in runs if not run.done and not run.devices and run.ready_at > clock]
        events.append(due_time)
        following = min(events)
        if not math.isfinite(following):
            if all(run.done for run in runs):
                break
            raise RuntimeError(f"{policy}: stuck at {clock:.1f}s")
        clock = following
        for run in runs:
            for node, end in run.devices.items():
                if node not in run.returned and end <= clock + 1e-9:
                    run.returned[node] = end
                    name = names[node]
                    run.estimates[name] = update_train_estimate(run.estimates.get(name), end - run.round_start)
                    run.participation[name] = run.participation.get(name, 0) + 1
            if run.devices and len(run.returned) == len(run.devices):
                finish_round(run, clock, train, seed)
    else:
        raise RuntimeError(f"{policy}: no end after 100000 events")
    return runs


def state_copy(model: torch.nn.Module) -> dict:
    """The model's arrays, copied: `model_state` gives views of the parameters, which the next device's training
    overwrites in place (kept as views, every device's update was the last device's model)."""
    return {name: array.copy() for name, array in model_state(model).items()}


def finish_round(run: Run, clock: float, train: bool, seed: int) -> None:
    run.round_seconds.append(clock - run.round_start)
    accuracy = None
    if train:
        states, counts = [], []
        for node in sorted(run.devices):
            shard = run.data.shards[node]
            load_model_state(run.model, run.state, "global")
            if len(shard):
                train_local(run.model, run.data.x_train[shard], run.data.y_train[shard],
                            epochs=LOCAL_EPOCHS[run.data.dataset], batch_size=32,
                            learning_rate=LEARNING_RATE, seed=seed * 1000 + run.round)
            states.append(state_copy(run.model))
            counts.append(max(len(shard), 1))
        run.state, _ = aggregate_states(states, counts, "fedavg")
        load_model_state(run.model, run.state, "global")
        accuracy, _ = evaluate(run.model, run.data.x_val, run.data.y_val)
    run.ready_at = clock + SERVER_SECONDS
    run.curve.append((run.ready_at, accuracy))
    run.devices, run.returned = {}, {}
    if run.round == run.rounds:
        run.ledger_at_rounds = dict(run.participation)
    run.round += 1


# --------------------------------------------------------------------------------------------------------------------
# Measures


def smoothed(curve: list) -> list[tuple[float, float]]:
    return [(curve[end - 1][0], statistics.mean(a for _, a in curve[end - SMOOTHING:end]))
            for end in range(SMOOTHING, len(curve) + 1)]


def time_to(curve: list, target: float) -> float | None:
    return next((moment for moment, accuracy in smoothed(curve) if accuracy >= target), None)


def rounds_to(curve: list, target: float) -> int | None:
    """How many rounds the task took until its running mean accuracy reached `target` (None: never)."""
    return next((end for end in range(SMOOTHING, len(curve) + 1)
                 if statistics.mean(a for _, a in curve[end - SMOOTHING:end]) >= target), None)


def final_accuracy(run: Run) -> float:
    """The mean accuracy over the last FINAL_WINDOW of the task's first `rounds` rounds."""
    return statistics.mean(a for _, a in run.curve[run.rounds - FINAL_WINDOW:run.rounds])


def jain_of_runs(runs: list[Run], devices: list[str]) -> float:
    """Jain's index of participation after the first `rounds` rounds, the mean over the tasks."""
    return statistics.mean(jain_index([(run.ledger_at_rounds or run.participation).get(d, 0) for d in devices])
                           for run in runs)


def run_seed(seed: int, policies: list[str], nodes: list[dict], speeds: list[float], task_count: int, rounds: int,
             weight: float, train_slice: int) -> dict:
    rng = random.Random(seed)
    order = list(range(len(nodes)))
    rng.shuffle(order)  # which node holds which shard: speed independent of the data
    nodes, speeds = [nodes[i] for i in order], [speeds[i] for i in order]
    tasks = build_tasks(task_count, len(nodes), seed, train_slice)
    names = [node["metadata"]["name"] for node in nodes]
    runs = {"random": simulate("random", tasks, nodes, speeds, rounds, seed, weight)}
    targets = [TARGET_SHARE * final_accuracy(run) for run in runs["random"]]
    budget = max(run.curve[-1][0] for run in runs["random"])
    for policy in policies:
        if policy != "random":
            runs[policy] = simulate(policy, tasks, nodes, speeds, rounds, seed, weight, targets=targets,
                                    budget=budget)
    result = {"seed": seed, "targets": [round(t, 4) for t in targets], "policies": {}}
    for policy in dict.fromkeys([*policies, "random"]):
        reached = [time_to(run.curve, target) for run, target in zip(runs[policy], targets)]
        result["policies"][policy] = {
            "seconds_to_target": None if None in reached else round(max(reached), 1),
            "rounds_to_target": [rounds_to(run.curve, target) for run, target in zip(runs[policy], targets)],
            "final_accuracy": [round(final_accuracy(run), 4) for run in runs[policy]],
            "jain": round(jain_of_runs(runs[policy], names), 3),
            "mean_round_seconds": round(statistics.mean(s for run in runs[policy] for s in run.round_seconds), 2),
            "rounds": [len(run.curve) for run in runs[policy]],
            "simulated_seconds": round(max(run.curve[-1][0] for run in runs[policy]), 1),
        }
    return result


def summarise(seeds: list[dict], policies: list[str]) -> dict:
    summary = {}
    for policy in policies:
        speedups, points = [], []
        for seed in seeds:
            mine, peer = seed["policies"][policy], seed["policies"]["random"]
            if mine["seconds_to_target"] and peer["seconds_to_target"]:
                speedups.append(peer["seconds_to_target"] / mine["seconds_to_target"])
            elif peer["seconds_to_target"]:
                speedups.append(0.0)  # never at target: counts as no speed-up at all
            points.append(100 * statistics.mean(np.subtract(mine["final_accuracy"], peer["final_accuracy"])))
        summary[policy] = {
            "speedup_vs_random_per_seed": [round(s, 2) for s in speedups],
            "speedup_vs_random_mean": round(statistics.mean(speedups), 2) if speedups else None,
            "speedup_vs_random_min": round(min(speedups), 2) if speedups else None,
            "accuracy_points_vs_random_mean": round(statistics.mean(points), 2),
            "jain_mean": round(statistics.mean(seed["policies"][policy]["jain"] for seed in seeds), 3),
        }
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", type=Path, help=f"nodes List (default {DEFAULT_FLEET.relative_to(FLEETS.parent)})")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10, help="seeds FIRST..FIRST+N-1")
    parser.add_argument("--first-seed", type=int, default=0, metavar="FIRST",
                        help="the first seed (default 0; split a long run into processes, one seed each)")
    parser.add_argument("--policy", action="append", choices=POLICIES,
                        help="policies to run (repeatable; default all); random always runs: it is the peer")
    parser.add_argument("--rounds", type=int, default=40, help="rounds per task")
    parser.add_argument("--fairness-weight", type=float, default=DEFAULT_FAIRNESS_WEIGHT)
    parser.add_argument("--train-slice", type=int, default=TRAIN_SLICE, help="MNIST samples per task")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 15 rounds, 3000 samples per task (the test)")
    parser.add_argument("--json", action="store_true", help="only the JSON line (no table on stderr)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.train_slice = min(args.seeds, 2), 15, 3000
    policies = list(dict.fromkeys(args.policy or POLICIES))
    nodes, speeds = load_fleet(args.fleet or DEFAULT_FLEET)
    torch.set_num_threads(1)
    started = time.perf_counter()
    seeds = [run_seed(seed, policies, nodes, speeds, args.tasks, args.rounds, args.fairness_weight,
                      args.train_slice) for seed in range(args.first_seed, args.first_seed + args.seeds)]
    policies = list(dict.fromkeys([*policies, "random"]))  # the peer is always reported
    report = {"benchmark": "sched_effect", "peer": "random", "fleet": (args.fleet or DEFAULT_FLEET).name,
              "devices": len(nodes), "speed_spread": round(max(speeds) / min(speeds), 2), "tasks": args.tasks,
              "per_round": PER_ROUND, "rounds": args.rounds, "fairness_weight": args.fairness_weight,
              "seeds": seeds, "summary": summarise(seeds, policies),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(report))
    if not args.json:
        for policy, line in report["summary"].items():
            print(f"{policy:12s} speed-up vs random: mean {line['speedup_vs_random_mean']} (per seed "
                  f"{line['speedup_vs_random_per_seed']}), accuracy {line['accuracy_points_vs_random_mean']:+} "
                  f"points, Jain {line['jain_mean']}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
