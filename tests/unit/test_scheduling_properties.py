"""Property-based checks over random fleets: no double booking, capacity never exceeded, every task gets perRound
devices or waits with a reason, the same input gives the same assignment, and the least period cost (the objective of
objective.py) on small instances, against exhaustive search."""
import itertools
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtask_operator.core.scheduling import DeviceRequest, select_devices
from fedtask_operator.core.scheduling.fleet import build_fleet
from fedtask_operator.core.scheduling.synthetic import make_fleet, make_train_pod

POLICIES = ("time-fair", "fastest", "random", "round-robin")


def random_requests(rng: random.Random, count: int) -> list[DeviceRequest]:
    requests = []
    for t in range(count):
        node_devices = rng.random() < 0.6
        resources = rng.choice([{"cpu": "500m"}, {"cpu": "2", "memory": "2Gi"}, {"nvidia.com/gpu": 1},
                                {"cpu": "250m", "memory": "512Mi"}, {"cpu": "8"}])
        selector = rng.choice([{}, {"matchLabels": {"fedtask.io/pool": f"pool-{rng.randrange(3)}"}},
                               {"matchExpressions": [{"key": "fedtask.io/pool", "operator": "NotIn",
                                                      "values": ["pool-0"]}]}])
        requests.append(DeviceRequest(
            task=f"ns/t{t}", per_round=rng.randint(1, 6), requests=resources, selector=selector,
            tolerations=rng.choice([(), ({"key": "dedicated", "operator": "Exists"},)]), node_devices=node_devices,
            shard_count=0 if node_devices else rng.randint(1, 12), priority=rng.randint(0, 2),
            policy=rng.choice(POLICIES), round=rng.randint(1, 9),
            participation={f"node-{i:05d}": rng.randint(0, 6) for i in range(0, 40, 3)},
        ))
    return requests


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), nodes=st.integers(1, 40), tasks=st.integers(1, 6))
def test_random_fleets_keep_every_invariant(seed, nodes, tasks):
    rng = random.Random(seed)
    node_objects, pods = make_fleet(nodes, seed=seed, pools=3, gpu_share=0.3, not_ready_share=0.1,
                                    cordoned_share=0.1, tainted_share=0.2)
    if nodes > 2:
        pods.append(make_train_pod("ns/busy", node_objects[0]["metadata"]["name"]))
    requests = random_requests(rng, tasks)
    result = select_devices(requests, node_objects, pods)
    again = select_devices(requests, node_objects, pods)
    assert result.tasks == again.tasks and dict(result.excluded) == dict(again.excluded)  # deterministic

    fleet = build_fleet(node_objects, pods)
    free = fleet.free.copy()
    node_owner = {}
    for request in requests:
        got = result.tasks[request.task]
        if got.waiting_reason:
            assert got.devices == [] and got.waiting_reason.strip()
            continue
        assert len(got.devices) == request.per_round
        assert len({slot.device for slot in got.devices}) == request.per_round
        for slot in got.devices:
            i = fleet.index[slot.node]
            assert fleet.ready[i]
            if request.node_devices:
                assert slot.device == slot.node
                assert slot.node not in node_owner, "node device booked twice"
                assert fleet.training.get(i, set()) <= {request.task}
                node_owner[slot.node] = request.task
            else:
                assert slot.device.startswith("d") and int(slot.device[1:]) < request.shard_count
            for resource, amount in request.requests.items():
                column = fleet.column(resource)
                free[i, column] -= {"500m": 500, "2": 2000, "2Gi": 2 * 2**30 * 1000, 1: 1000, "250m": 250,
                                    "512Mi": 512 * 2**20 * 1000, "8": 8000}[amount]
    touched = sorted({fleet.index[s.node] for t in result.tasks.values() for s in t.devices})
    assert (free[touched] >= 0).all(), "capacity exceeded"
    assigned = {s.node for t in result.tasks.values() for s in t.devices}
    assert set(result.excluded) == set(fleet.names) - assigned
    assert all(reason for reason in result.excluded.values())


def exhaustive_optimum(requests, nodes):
    """The least period cost (objective.py, from first principles) by exhaustive search over disjoint device sets:
    each task pays T / tau + w * N Var(p') / (2 k max(1, m)) over its candidates."""
    names = [n["metadata"]["name"] for n in nodes]
    tasks = []
    for request in requests:
        pools = set(request.selector["matchExpressions"][0]["values"])
        candidates = [n["metadata"]["name"] for n in nodes if n["metadata"]["labels"]["fedtask.io/pool"] in pools]
        est = {name: request.train_seconds[name] for name in names}
        tau = float(np.median([est[c] for c in candidates])) if candidates else 1.0
        p = np.array([request.participation.get(c, 0) for c in candidates], dtype=float)
        weight = request.fairness_weight if request.policy == "time-fair" else 0.0
        tasks.append((request, candidates, est, tau, p, weight))

    def cost(task, chosen):
        request, candidates, est, tau, p, weight = task
        after = p + np.array([c in chosen for c in candidates])
        unfairness = len(candidates) * after.var() / (2 * request.per_round * max(1.0, p.mean()))
        return max(est[c] for c in chosen) / tau + weight * unfairness

    best = float("inf")

    def search(t, used, total):
        nonlocal best
        if total >= best - 1e-12:
            return  # every term is >= 0
        if t == len(tasks):
            best = total
            return
        options = [c for c in tasks[t][1] if c not in used]
        for chosen in itertools.combinations(options, tasks[t][0].per_round):
            search(t + 1, used | set(chosen), total + cost(tasks[t], chosen))

    search(0, frozenset(), 0.0)
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_the_period_cost_is_optimal_on_small_instances(seed):
    """The joint solver against exhaustive search (<= 12 devices, 3 competing tasks, time-fair at random weights
    and participation, or fastest): the same least cost, or both find the tasks cannot all be served."""
    rng = random.Random(seed)
    count = rng.randint(4, 12)
    node_objects, _ = make_fleet(count, seed=seed, pools=3, gpu_share=0, not_ready_share=0, cordoned_share=0,
                                 tainted_share=0, pods_per_node=0)
    requests = []
    for t in range(3):
        pools = rng.sample(["pool-0", "pool-1", "pool-2"], rng.randint(1, 3))
        requests.append(DeviceRequest(
            task=f"ns/t{t}", per_round=rng.randint(1, 3), requests={"cpu": "100m"}, node_devices=True,
            policy=rng.choice(["time-fair", "time-fair", "fastest"]), fairness_weight=rng.choice([0.0, 0.5, 1, 4]),
            selector={"matchExpressions": [{"key": "fedtask.io/pool", "operator": "In", "values": pools}]},
            participation={f"node-{i:05d}": rng.randint(0, 6) for i in range(count)},
            train_seconds={f"node-{i:05d}": rng.choice([1.0, 2.0, 3.0, 5.0, 8.0]) for i in range(count)}))
    result = select_devices(requests, node_objects, [])
    optimum = exhaustive_optimum(requests, node_objects)
    if optimum == float("inf"):
        assert any(t.waiting_reason for t in result.tasks.values())
    else:
        assert all(not t.waiting_reason for t in result.tasks.values())
        assert result.cost == pytest.approx(optimum, rel=1e-5, abs=1e-6)
        assert all(t.optimal for t in result.tasks.values())
