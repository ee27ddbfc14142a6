"""Speed of one learning period's joint device selection (one JSON line).

10,000 nodes (heterogeneous: CPU sizes, GPUs of several products, NotReady/cordoned/tainted nodes, one system pod
each) and 100 competing tasks (node-device and shard tasks; pool selectors, GPU requests, tolerations, all four
policies), from the raw `kubectl get -o json` dicts to the Assignment. Target: <= 200 ms. Also: the same with the
fleet prebuilt, CPU time (robust to other processes on shared cores), how the time grows with nodes and with tasks,
and the cost of writing out every excluded node's reasons. Peer: one plain Python pass over the same node and pod
dicts (the least any scheduler must pay).

    python benchmarks/bench_sched_speed.py [--nodes 10000] [--tasks 100] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import random
import time

from fedtask_operator.core.scheduling import DeviceRequest, select_devices
from fedtask_operator.core.scheduling.fleet import build_fleet
from fedtask_operator.core.scheduling.synthetic import make_fleet

POOLS = 20


def make_requests(count: int, seed: int = 0) -> list[DeviceRequest]:
    rng = random.Random(seed)
    requests = []
    for t in range(count):
        pool = {"matchLabels": {"fedtask.io/pool": f"pool-{t % POOLS}"}}
        kind = t % 4
        common = dict(task=f"team-{t % 7}/task-{t:03d}", priority=rng.randint(0, 3), round=rng.randint(1, 50))
        if kind == 0:
            requests.append(DeviceRequest(per_round=5, requests={"cpu": "1", "memory": "1Gi"}, selector=pool,
                                          node_devices=True, policy="time-fair", **common))
        elif kind == 1:
            requests.append(DeviceRequest(per_round=2, requests={"nvidia.com/gpu": 1, "cpu": "2"}, node_devices=True,
                                          policy=rng.choice(("time-fair", "fastest")),
                                          tolerations=({"key": "dedicated", "operator": "Exists"},), **common))
        elif kind == 2:
            requests.append(DeviceRequest(per_round=10, requests={"cpu": "500m", "memory": "512Mi"}, selector=pool,
                                          shard_count=100, policy="random", **common))
        else:
            requests.append(DeviceRequest(per_round=8, requests={"cpu": "250m"}, shard_count=50,
                                          policy="round-robin", **common))
    return requests


def best_of(repeat: int, function, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        started = clock()
        function()
        times.append(clock() - started)
    return min(times)


def scan(nodes, pods) -> int:
    touched = 0
    for node in nodes:
        touched += len(node["metadata"]["name"]) + len(node["status"]["allocatable"])
    for pod in pods:
        touched += len(pod["spec"]["nodeName"])
    return touched


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    nodes, pods = make_fleet(args.nodes, seed=1, pools=POOLS)
    requests = make_requests(args.tasks)
    select_devices(requests, nodes, pods)  # warm-up (imports, caches of parsed quantity strings)
    total = best_of(args.repeat, lambda: select_devices(requests, nodes, pods))
    cpu = best_of(args.repeat, lambda: select_devices(requests, nodes, pods), time.process_time)
    peer = best_of(args.repeat, lambda: scan(nodes, pods))
    fleet_build = best_of(args.repeat, lambda: build_fleet(nodes, pods))
    prebuilt = best_of(args.repeat, lambda: select_devices(requests, build_fleet(nodes, pods)))
    assignment = select_devices(requests, nodes, pods)
    explain = best_of(1, lambda: dict(select_devices(requests, nodes, pods).excluded)) - total
    growth_nodes = {}
    for count in sorted({args.nodes // 4, args.nodes // 2, args.nodes}):
        fleet_nodes, fleet_pods = make_fleet(count, seed=1, pools=POOLS)
        growth_nodes[count] = round(best_of(3, lambda: select_devices(requests, fleet_nodes, fleet_pods)) * 1000, 1)
    growth_tasks = {}
    for count in sorted({args.tasks // 4, args.tasks // 2, args.tasks, args.tasks * 2}):
        more = make_requests(count)
        growth_tasks[count] = round(best_of(3, lambda: select_devices(more, nodes, pods)) * 1000, 1)
    waiting = sum(1 for task in assignment.tasks.values() if task.waiting_reason)
    report = {
        "benchmark": "sched_speed", "nodes": args.nodes, "pods": len(pods), "tasks": args.tasks,
        "seconds": round(total, 4), "cpu_seconds": round(cpu, 4), "target_seconds": 0.2,
        "meets_target": total <= 0.2,
        "peer": "one plain Python pass over the node and pod dicts", "peer_seconds": round(peer, 4),
        "ratio_vs_peer": round(total / peer, 1),
        "fleet_build_seconds": round(fleet_build, 4),
        "select_with_fleet_build_seconds": round(prebuilt, 4),
        "excluded_reasons_all_nodes_seconds": round(explain, 3),
        "ms_by_nodes": growth_nodes, "ms_by_tasks": growth_tasks,
        "tasks_served": args.tasks - waiting, "tasks_waiting": waiting,
        "devices_assigned": sum(len(t.devices) for t in assignment.tasks.values()),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
