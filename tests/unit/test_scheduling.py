"""Device selection rules: candidates (Ready, cordon, taints, resources), exclusivity, priorities, aging, policies."""
import dataclasses
import math

import pytest

from fedtask_operator.core.scheduling import (
    DeviceRequest,
    jain_index,
    select_devices,
    update_train_estimate,
    update_train_estimates,
)
from fedtask_operator.core.scheduling.fleet import FleetError, build_fleet, pod_requests
from fedtask_operator.core.scheduling.matching import SelectorError, check_selector, matches_selector, tolerates
from fedtask_operator.core.scheduling.synthetic import make_node, make_pod, make_train_pod


def node_task(name="ns/a", per_round=1, **kwargs):
    return DeviceRequest(task=name, per_round=per_round, requests=kwargs.pop("requests", {"cpu": "500m"}),
                         node_devices=True, **kwargs)


def shard_task(name="ns/s", per_round=1, shard_count=4, **kwargs):
    return DeviceRequest(task=name, per_round=per_round, requests=kwargs.pop("requests", {"cpu": "500m"}),
                         shard_count=shard_count, **kwargs)


def nodes_of(assignment, task):
    return [slot.node for slot in assignment.tasks[task].devices]


# --- candidates -------------------------------------------------------------------------------------------------

def test_not_ready_and_cordoned_nodes_are_excluded_with_their_reason():
    nodes = [make_node("ok"), make_node("down", ready=False), make_node("cordoned", unschedulable=True)]
    result = select_devices([node_task(per_round=1)], nodes, [])
    assert nodes_of(result, "ns/a") == ["ok"]
    assert result.excluded["down"].startswith("NotReady")
    assert result.excluded["cordoned"].startswith("cordoned")


def test_a_node_without_a_ready_condition_is_not_ready():
    node = make_node("n")
    node["status"]["conditions"] = [{"type": "MemoryPressure", "status": "False"}]
    result = select_devices([node_task()], [node], [])
    assert "NotReady" in result.tasks["ns/a"].waiting_reason


def test_waiting_reason_counts_each_shortage():
    nodes = [make_node(f"cpu{i}") for i in range(3)] + [make_node("down", ready=False, gpus=1),
                                                         make_node("off", ready=False)]
    result = select_devices([node_task("ns/vision", requests={"nvidia.com/gpu": 1})], nodes, [])
    reason = result.tasks["ns/vision"].waiting_reason
    assert reason.startswith("0 of 5 nodes qualify: 2 NotReady, 3 short of nvidia.com/gpu (0 free, 1 requested)")
    assert result.tasks["ns/vision"].devices == []
    assert result.excluded["cpu0"] == "vision: short of nvidia.com/gpu (0 free, 1 requested)"


def test_selector_that_matches_nothing_is_named():
    result = select_devices([node_task(selector={"matchLabels": {"zone": "mars"}})], [make_node("n")], [])
    assert result.tasks["ns/a"].waiting_reason.startswith("no node matches the selector zone=mars")
    assert result.excluded["n"] == "matches no task's selector"


@pytest.mark.parametrize("selector, expected", [
    ({}, {"a", "b", "c"}),
    ({"matchLabels": {"zone": "x"}}, {"a", "b"}),
    ({"matchLabels": {"zone": "x", "gpu": "yes"}}, {"a"}),
    ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x", "y"]}]}, {"a", "b", "c"}),
    ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["x"]}]}, {"c"}),
    ({"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["yes"]}]}, {"b", "c"}),  # absent key
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"a"}),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"b", "c"}),
    ({"matchLabels": {"zone": "x"}, "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"b"}),
])
def test_label_selectors(selector, expected):
    nodes = [make_node("a", labels={"zone": "x", "gpu": "yes"}), make_node("b", labels={"zone": "x"}),
             make_node("c", labels={"zone": "y"})]
    result = select_devices([node_task(per_round=len(expected), selector=selector, policy="fastest")], nodes, [])
    assert set(nodes_of(result, "ns/a")) == expected
    assert all(matches_selector(n["metadata"]["labels"], selector) == (n["metadata"]["name"] in expected)
               for n in nodes)


@pytest.mark.parametrize("selector", [
    {"matchExpressions": [{"key": "a", "operator": "Near"}]},
    {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
    {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
    {"matchLabelz": {}},
])
def test_invalid_selectors_are_rejected_with_the_field(selector):
    with pytest.raises(SelectorError, match="spec.devices.selector"):
        check_selector(selector, "task ns/a: spec.devices.selector")
    rejected = select_devices([node_task(selector=selector)], [make_node("n")], []).tasks["ns/a"]
    assert rejected.rejected and not rejected.devices and "spec.devices.selector" in rejected.waiting_reason


TAINT = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}


@pytest.mark.parametrize("toleration, tolerated", [
    ({"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}, True),
    ({"key": "dedicated", "value": "ml"}, True),  # operator defaults to Equal, empty effect matches all
    ({"key": "dedicated", "operator": "Equal", "value": "db"}, False),
    ({"key": "dedicated", "operator": "Exists"}, True),
    ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),
    ({"operator": "Exists"}, True),  # empty key + Exists tolerates everything
    ({"key": "other", "operator": "Exists"}, False),
])
def test_toleration_semantics(toleration, tolerated):
    assert tolerates(toleration, TAINT) is tolerated
    nodes = [make_node("tainted", taints=[TAINT])]
    result = select_devices([node_task(tolerations=(toleration,))], nodes, [])
    assert (nodes_of(result, "ns/a") == ["tainted"]) is tolerated
    if not tolerated:
        assert "1 with untolerated taint dedicated=ml:NoSchedule" in result.tasks["ns/a"].waiting_reason


def test_prefer_no_schedule_taints_do_not_block_and_no_execute_does():
    nodes = [make_node("soft", taints=[{"key": "k", "effect": "PreferNoSchedule"}]),
             make_node("hard", taints=[{"key": "k", "effect": "NoExecute"}])]
    result = select_devices([node_task(per_round=1)], nodes, [])
    assert nodes_of(result, "ns/a") == ["soft"]
    assert result.excluded["hard"] == "a: taint k:NoExecute"


def test_tolerating_the_unschedulable_taint_allows_cordoned_nodes():
    nodes = [make_node("c", unschedulable=True,
                       taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])]
    toleration = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}
    assert nodes_of(select_devices([node_task(tolerations=(toleration,))], nodes, []), "ns/a") == ["c"]
    assert "cordoned" in select_devices([node_task()], nodes, []).tasks["ns/a"].waiting_reason


# --- resource arithmetic ------------------------------------------------------------------------------------------

def test_free_resources_subtract_requests_of_non_terminated_pods():
    nodes = [make_node("n", cpu="2", memory="4Gi")]
    pods = [make_pod("p1", "n", {"cpu": "500m", "memory": "1Gi"}),
            make_pod("p2", "n", {"cpu": "1", "memory": "1536Mi"}),
            make_pod("done", "n", {"cpu": "2"}, phase="Succeeded"),
            make_pod("failed", "n", {"cpu": "2"}, phase="Failed"),
            make_pod("elsewhere", "other-node", {"cpu": "2"})]
    fits = node_task(requests={"cpu": "500m", "memory": "1536Mi"})
    assert nodes_of(select_devices([fits], nodes, pods), "ns/a") == ["n"]
    too_much = node_task(requests={"cpu": "501m"})
    reason = select_devices([too_much], nodes, pods).tasks["ns/a"].waiting_reason
    assert "1 short of cpu (500m free, 501m requested)" in reason
    memory = node_task(requests={"memory": "1537Mi"})
    assert "short of memory (1536Mi free, 1537Mi requested)" in select_devices([memory], nodes, pods).tasks[
        "ns/a"].waiting_reason


def test_extended_resources_are_counted_and_missing_ones_are_zero():
    nodes = [make_node("fpga", extra={"example.com/fpga": "2"}), make_node("plain")]
    pods = [make_pod("user", "fpga", {"example.com/fpga": "1"})]
    result = select_devices([node_task(requests={"example.com/fpga": 1})], nodes, pods)
    assert nodes_of(result, "ns/a") == ["fpga"]
    result = select_devices([node_task(requests={"example.com/fpga": 2})], nodes, pods)
    assert "2 short of example.com/fpga" in result.tasks["ns/a"].waiting_reason


def test_pod_requests_follow_kubernetes_init_container_and_limit_rules():
    pod = {"spec": {
        "containers": [{"resources": {"requests": {"cpu": "200m"}}},
                       {"resources": {"limits": {"cpu": "300m", "memory": "1Gi"}}}],  # limit only: request = limit
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "100Mi"}}},
                           {"restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}}],
        "overhead": {"cpu": "10m"}}}
    requests = pod_requests(pod)
    assert requests["cpu"] == 2000 + 10  # the init container's 2 cores exceed 200m + 300m + 100m sidecar
    assert requests["memory"] == 2**30 * 1000
    sidecar_first = {"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}], "initContainers": [
        {"restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
        {"resources": {"requests": {"cpu": "1200m"}}}]}}
    assert pod_requests(sidecar_first)["cpu"] == 1700  # init runs beside the sidecar started before it


def test_pod_count_limit_is_respected():
    nodes = [make_node("full", pods="2"), make_node("room", pods="3")]
    pods = [make_pod(f"p{i}", "full", {}) for i in range(2)]
    assert nodes_of(select_devices([node_task()], nodes, pods), "ns/a") == ["room"]


def test_bad_quantities_in_nodes_or_pods_name_the_object():
    with pytest.raises(FleetError, match=r"node n: status.allocatable.cpu: invalid quantity 'lots'"):
        build_fleet([make_node("n", cpu="lots")], [])
    with pytest.raises(FleetError, match=r"pod default/p: spec.containers\[0\].resources.requests.memory"):
        build_fleet([make_node("n")], [make_pod("p", "n", {"memory": "1 GB"})])
    rejected = select_devices([node_task(requests={"cpu": "x"})], [make_node("n")], []).tasks["ns/a"]
    assert rejected.rejected
    assert rejected.waiting_reason.startswith("task ns/a: spec.devices.resources.requests.cpu: invalid quantity")
    with pytest.raises(FleetError, match=r"nodes\[1\].metadata.name: duplicate"):
        build_fleet([make_node("n"), make_node("n")], [])


# --- exclusivity and shard packing ---------------------------------------------------------------------------------

def test_node_running_another_tasks_train_pod_is_taken_but_own_is_not():
    nodes = [make_node("busy"), make_node("mine")]
    pods = [make_train_pod("ns/other", "busy"), make_train_pod("ns/a", "mine")]
    result = select_devices([node_task(per_round=2)], nodes, pods)
    assert "1 taken by ns/other" in result.tasks["ns/a"].waiting_reason
    result = select_devices([node_task(per_round=1)], nodes, pods)
    assert nodes_of(result, "ns/a") == ["mine"]
    assert result.excluded["busy"] == "a: taken by ns/other"
    finished = [make_train_pod("ns/other", "busy", phase="Succeeded")]
    assert len(nodes_of(select_devices([node_task(per_round=2)], nodes, finished), "ns/a")) == 2


def test_a_created_train_pod_counts_on_its_node_before_it_is_bound():
    """Between our pod's creation and kube-scheduler's binding (spec.nodeName) its node is already taken: the pod is
    pinned by required node affinity, so another task's period must not book the same node or resources."""
    def unbound(pod):
        node = pod["spec"].pop("nodeName")
        pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}
        pod["status"] = {"phase": "Pending"}
        return pod

    nodes = [make_node("busy", cpu="1"), make_node("free", cpu="1")]
    pending = [unbound(make_train_pod("ns/other", "busy"))]  # 500m of busy's 1 cpu
    result = select_devices([node_task(per_round=2)], nodes, pending)
    assert "1 taken by ns/other" in result.tasks["ns/a"].waiting_reason
    assert nodes_of(select_devices([shard_task(per_round=1, requests={"cpu": "1"})], nodes, pending), "ns/s") == [
        "free"]
    either = unbound(make_pod("p", "busy", {"cpu": "1"}))
    either["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
        0]["matchExpressions"][0]["values"].append("free")  # not pinned to one node: it counts nowhere yet
    assert len(nodes_of(select_devices([node_task(per_round=2)], nodes, [either]), "ns/a")) == 2


def test_node_devices_are_never_double_booked_within_a_period():
    nodes = [make_node(f"n{i}", cpu="32") for i in range(4)]
    tasks = [node_task(f"ns/t{i}", per_round=2) for i in range(2)]
    result = select_devices(tasks, nodes, [])
    first, second = nodes_of(result, "ns/t0"), nodes_of(result, "ns/t1")
    assert len(first) == len(second) == 2 and not set(first) & set(second)


def test_shards_are_packed_by_free_resources_subtracting_each_placement():
    nodes = [make_node("big", cpu="4"), make_node("small", cpu="1")]
    result = select_devices([shard_task(per_round=5, shard_count=10, requests={"cpu": "1"})], nodes, [])
    placed = nodes_of(result, "ns/s")
    assert sorted(placed) == ["big"] * 4 + ["small"]
    assert [slot.device for slot in result.tasks["ns/s"].devices] == sorted({s.device for s in
                                                                              result.tasks["ns/s"].devices})
    assert all(slot.device.startswith("d0") for slot in result.tasks["ns/s"].devices)
    result = select_devices([shard_task(per_round=6, shard_count=10, requests={"cpu": "1"})], nodes, [])
    assert result.tasks["ns/s"].waiting_reason.startswith("room for 5 of 6 simulated devices")


def test_shards_of_two_tasks_share_nodes_without_exceeding_them():
    nodes = [make_node("n", cpu="2")]
    tasks = [shard_task("ns/s1", per_round=1), shard_task("ns/s2", per_round=2), shard_task("ns/s3", per_round=2)]
    result = select_devices(tasks, nodes, [])
    served = [t for t in result.tasks.values() if not t.waiting_reason]
    assert sum(len(t.devices) for t in served) <= 4  # 2 cores / 500m
    assert result.tasks["ns/s3"].waiting_reason.startswith("room for 1 of 2")


def test_shard_task_with_more_per_round_than_shards_waits():
    result = select_devices([shard_task(per_round=5, shard_count=3)], [make_node("n", cpu="16")], [])
    assert "exceeds the number of simulated devices (3)" in result.tasks["ns/s"].waiting_reason


def test_node_device_task_then_shard_task_share_a_node_by_resources():
    nodes = [make_node("n", cpu="2")]
    tasks = [node_task("ns/a", requests={"cpu": "1500m"}), shard_task("ns/s", requests={"cpu": "500m"}),
             shard_task("ns/t", requests={"cpu": "500m"})]
    result = select_devices(tasks, nodes, [])
    assert nodes_of(result, "ns/a") == ["n"] and nodes_of(result, "ns/s") == ["n"]
    assert "short of cpu (0 free, 500m requested)" in result.tasks["ns/t"].waiting_reason


def test_priority_decides_across_node_device_and_pool_tasks():
    """One node, room for one train pod: a pool task of higher priority that arrived later wins it over a node-device
    task (before, node-device tasks were always placed first); at equal priority the one waiting longer wins."""
    nodes = [make_node("n", cpu="1")]
    early_node = node_task("ns/node", requests={"cpu": "1"}, priority=0, waiting_since=100.0)
    late_pool = shard_task("ns/pool", requests={"cpu": "1"}, priority=5, waiting_since=200.0)
    result = select_devices([early_node, late_pool], nodes, [], now=200.0)
    assert nodes_of(result, "ns/pool") == ["n"]
    assert result.tasks["ns/node"].waiting_reason == "0 of 1 nodes qualify: 1 short of cpu (0 free, 1 requested); " \
                                                     "needs 1 device"
    # the node stays taken for a node-device task even when it has room: a node device trains one task at a time
    roomy = [make_node("n", cpu="4")]
    result = select_devices([early_node, late_pool], roomy, [], now=200.0)
    assert nodes_of(result, "ns/pool") == ["n"]
    assert result.tasks["ns/node"].waiting_reason == "0 of 1 nodes qualify: 1 taken by ns/pool; needs 1 device"
    # equal priorities: arrival decides, whatever the kind
    same = dataclasses.replace(late_pool, priority=0)
    result = select_devices([early_node, same], nodes, [], now=200.0)
    assert nodes_of(result, "ns/node") == ["n"] and "short of cpu" in result.tasks["ns/pool"].waiting_reason
    earlier_pool = dataclasses.replace(same, waiting_since=50.0)
    assert nodes_of(select_devices([early_node, earlier_pool], nodes, [], now=200.0), "ns/pool") == ["n"]


# --- priorities and aging ---------------------------------------------------------------------------------------

def test_priority_orders_competing_tasks():
    nodes = [make_node("n0"), make_node("n1")]
    low, high = node_task("ns/low", per_round=2, priority=0), node_task("ns/high", per_round=2, priority=5)
    result = select_devices([low, high], nodes, [])
    assert len(nodes_of(result, "ns/high")) == 2
    reason = result.tasks["ns/low"].waiting_reason
    assert "higher-priority tasks hold 2 of them (ns/high: 2)" in reason and reason.endswith("needs 2 devices")


def test_aging_lets_a_long_waiting_task_overtake():
    nodes = [make_node("n0")]
    now = 10_000.0
    waiting = node_task("ns/waiting", priority=0, waiting_since=now - 301)
    fresh = node_task("ns/fresh", priority=5, waiting_since=now)
    assert nodes_of(select_devices([waiting, fresh], nodes, [], now=now), "ns/waiting") == ["n0"]
    assert nodes_of(select_devices([waiting, fresh], nodes, [], now=now - 200), "ns/fresh") == ["n0"]
    assert nodes_of(select_devices([waiting, fresh], nodes, []), "ns/fresh") == ["n0"]  # no clock: no aging


def test_equal_priority_goes_to_the_longest_waiting():
    nodes = [make_node("n0")]
    a = node_task("ns/a", waiting_since=200.0)
    b = node_task("ns/b", waiting_since=100.0)
    assert nodes_of(select_devices([a, b], nodes, []), "ns/b") == ["n0"]


def test_joint_matching_serves_both_when_a_greedy_order_would_not():
    # "wide" can use any node, "narrow" only gpu nodes: the matching keeps gpu nodes for "narrow".
    nodes = [make_node("g0", gpus=1, cpu="16"), make_node("g1", gpus=1, cpu="16"), make_node("c0", cpu="1"),
             make_node("c1", cpu="1")]
    wide = node_task("ns/a-wide", per_round=2, priority=1, policy="fastest")
    narrow = node_task("ns/b-narrow", per_round=2, requests={"nvidia.com/gpu": 1})
    result = select_devices([wide, narrow], nodes, [])
    assert sorted(nodes_of(result, "ns/b-narrow")) == ["g0", "g1"]
    assert sorted(nodes_of(result, "ns/a-wide")) == ["c0", "c1"]


def test_period_time_is_minimised_jointly():
    # Each task alone would take the fast node; jointly the period is best when "b" (slow elsewhere) gets it.
    nodes = [make_node("fast", cpu="16"), make_node("mid", cpu="8"), make_node("slow", cpu="1")]
    a = node_task("ns/a", policy="fastest", selector={"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["fast", "mid"]}]})
    b = node_task("ns/b", policy="fastest", selector={"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["fast", "slow"]}]})
    result = select_devices([a, b], nodes, [])
    assert nodes_of(result, "ns/a") == ["mid"] and nodes_of(result, "ns/b") == ["fast"]
    assert result.period_seconds == pytest.approx(max(s.estimated_seconds for t in result.tasks.values()
                                                      for s in t.devices))


# --- policies ---------------------------------------------------------------------------------------------------

def fleet(count=10):
    return [make_node(f"n{i:02d}", cpu=str(1 + i)) for i in range(count)]


def test_fastest_takes_the_fastest_devices():
    result = select_devices([node_task(per_round=3, policy="fastest")], fleet(), [])
    assert nodes_of(result, "ns/a") == ["n09", "n08", "n07"]


def test_observed_train_seconds_override_the_resource_model():
    observed = {"n00": 0.01, "n09": 50.0}
    result = select_devices([node_task(per_round=2, policy="fastest", train_seconds=observed)], fleet(), [])
    assert nodes_of(result, "ns/a")[0] == "n00"
    assert "n09" not in nodes_of(result, "ns/a")
    assert result.tasks["ns/a"].devices[0].estimated_seconds == pytest.approx(0.01)


def test_random_is_deterministic_per_task_and_round_and_varies_with_the_round():
    def pick(round_):
        return nodes_of(select_devices([node_task(per_round=3, policy="random", round=round_)], fleet(), []), "ns/a")
    assert pick(1) == pick(1)
    assert len({tuple(pick(r)) for r in range(1, 8)}) > 1


def test_round_robin_rotates_by_participation():
    participation = {}
    seen = []
    for round_ in range(1, 6):
        request = node_task(per_round=2, policy="round-robin", round=round_, participation=dict(participation))
        chosen = nodes_of(select_devices([request], fleet(), []), "ns/a")
        seen += chosen
        for node in chosen:
            participation[node] = participation.get(node, 0) + 1
    assert sorted(seen) == sorted(f"n{i:02d}" for i in range(10))  # every device once in five rounds


def chosen_cost(request, nodes, chosen):
    """The period cost of one task choosing `chosen` (objective.py), computed from first principles."""
    import numpy as np

    from fedtask_operator.core.scheduling.estimates import SECONDS_PER_SAMPLE_PER_CORE
    names = [n["metadata"]["name"] for n in nodes]
    speed = {n["metadata"]["name"]: float(n["status"]["allocatable"]["cpu"]) for n in nodes}
    est = {name: request.train_seconds.get(name, request.samples.get(name, 1000) * SECONDS_PER_SAMPLE_PER_CORE
                                           / speed[name]) for name in names}
    tau = float(np.median([est[name] for name in names]))
    p = np.array([request.participation.get(name, 0) for name in names], dtype=float)
    after = p + np.array([name in chosen for name in names])
    weight = 1.0 if request.fairness_weight is None else request.fairness_weight
    unfairness = len(names) * after.var() / (2 * request.per_round * max(1.0, p.mean()))
    return max(est[name] for name in chosen) / tau + weight * unfairness


def test_time_fair_brings_back_a_device_that_fell_behind_once_its_deficit_outweighs_the_slower_round():
    participation = {f"n{i:02d}": 10 for i in range(10)}
    participation["n00"] = 0  # the slowest device (10x slower than n09) never trained
    def chosen(weight):
        request = node_task(per_round=3, participation=participation, fairness_weight=weight)
        return nodes_of(select_devices([request], fleet(), []), "ns/a")
    assert "n00" not in chosen(0.0) and "n00" not in chosen(1.0)  # one device's deficit: not worth a slow round
    assert "n00" in chosen(50.0)
    assert sorted(chosen(0.0)) == ["n07", "n08", "n09"]  # weight 0: the fastest feasible choice


def test_time_fair_minimises_the_period_cost_over_every_choice():
    import itertools
    nodes = fleet(8)
    participation = {"n00": 0, "n01": 6, "n02": 1, "n03": 5, "n04": 2, "n05": 7, "n06": 3, "n07": 9}
    for weight in (0.0, 0.5, 1.0, 3.0, 10.0):
        request = node_task(per_round=3, participation=participation, fairness_weight=weight)
        result = select_devices([request], nodes, [])
        got = chosen_cost(request, nodes, nodes_of(result, "ns/a"))
        best = min(chosen_cost(request, nodes, combo) for combo in itertools.combinations(
            [n["metadata"]["name"] for n in nodes], 3))
        assert got == pytest.approx(best)
        assert result.tasks["ns/a"].cost == pytest.approx(best, rel=1e-4)  # the assignment reports it
        assert result.tasks["ns/a"].optimal


def test_time_fair_fills_a_round_with_the_most_data_no_slower_than_its_slowest_device():
    participation = {f"n{i:02d}": 10 for i in range(10)}
    participation["n00"] = 0  # the slowest device is far behind: at weight 50 this round takes its time
    samples = {f"n{i:02d}": 1000 for i in range(10)}
    samples["n03"] = 3000  # 3000 samples on 4 cores: slower than the fast devices, still faster than n00
    request = node_task(per_round=3, participation=participation, samples=samples, fairness_weight=50)
    chosen = nodes_of(select_devices([request], fleet(), []), "ns/a")
    assert chosen[:2] == ["n00", "n03"]  # the biggest shard within the round time; then equals in a random order
    # the round time stays the behind device's: nobody slower than it is taken for its data
    samples["n03"] = 9000
    request = node_task(per_round=3, participation=participation, samples=samples, fairness_weight=50)
    result = select_devices([request], fleet(), [])
    assert nodes_of(result, "ns/a")[0] == "n00" and "n03" not in nodes_of(result, "ns/a")
    assert max(slot.estimated_seconds for slot in result.tasks["ns/a"].devices) == pytest.approx(2.0)


def test_time_fair_leaves_a_device_far_ahead_to_the_others_but_never_makes_a_task_wait_for_it():
    nodes = [make_node(name) for name in ("f0", "f1", "f2", "s0", "s1", "s2", "s3")]
    seconds = {**{name: 1.0 for name in ("f0", "f1", "f2")}, **{f"s{i}": 10.0 for i in range(4)}}
    ahead = {"f0": 30, "f1": 3, "f2": 3, "s0": 3, "s1": 3, "s2": 3, "s3": 3}  # mean 6.9: f0 is far ahead
    alone = node_task(per_round=3, train_seconds=seconds, participation=ahead)
    chosen = nodes_of(select_devices([alone], nodes, []), "ns/a")
    assert "f0" not in chosen  # a slower round, so that f0 sits this one out
    even = node_task(per_round=3, train_seconds=seconds, participation={**ahead, "f0": 3})
    assert sorted(nodes_of(select_devices([even], nodes, []), "ns/a")) == ["f0", "f1", "f2"]

    # Competition: "b" can use only f1, f2 and s0; "a" needs f0 (5 rounds against a mean of 1.25) for both to be
    # served in this period, so it gets it.
    few = [make_node(name) for name in ("f0", "f1", "f2", "s0")]
    a = node_task("ns/a", per_round=2, train_seconds=seconds, participation={"f0": 5})
    b = node_task("ns/b", per_round=2, selector={"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["f1", "f2", "s0"]}]})
    result = select_devices([a, b], few, [])
    assert not result.tasks["ns/a"].waiting_reason and not result.tasks["ns/b"].waiting_reason
    assert "f0" in nodes_of(result, "ns/a") and len(set(nodes_of(result, "ns/a")) | set(nodes_of(result, "ns/b"))) == 4


def run_rounds(policy, weight=None, rounds=40, count=12, per_round=3):
    nodes = [make_node(f"n{i:02d}", cpu=str(1 + i)) for i in range(count)]
    participation, times = {}, []
    for round_ in range(1, rounds + 1):
        request = node_task(per_round=per_round, participation=dict(participation), round=round_, policy=policy,
                            fairness_weight=weight)
        result = select_devices([request], nodes, [])
        times.append(result.period_seconds)
        for node in nodes_of(result, "ns/a"):
            participation[node] = participation.get(node, 0) + 1
    return jain_index([participation.get(n["metadata"]["name"], 0) for n in nodes]), sum(times)


def test_the_fairness_weight_trades_round_time_for_fair_participation():
    fastest_jain, fastest_time = run_rounds("fastest")
    robin_jain, robin_time = run_rounds("round-robin")
    runs = [run_rounds("time-fair", weight) for weight in (0.0, 0.3, 1.0, 3.0, 30.0)]
    assert runs[0] == (fastest_jain, fastest_time)  # weight 0 is the fastest feasible choice
    jains, times = [jain for jain, _ in runs], [time for _, time in runs]
    assert jains == sorted(jains) and times == sorted(times)  # more weight: fairer and slower, never the reverse
    assert jains[-1] > 0.95 and times[-1] < robin_time  # fair, and still faster than taking turns blindly
    assert jains[2] > fastest_jain  # the default weight already spreads the work beyond the fastest devices


def test_unknown_policy_is_rejected():
    rejected = select_devices([node_task(policy="cheapest")], fleet(), []).tasks["ns/a"]
    assert rejected.rejected and "spec.scheduling.policy: must be one of" in rejected.waiting_reason


@pytest.mark.parametrize("field, value, message", [
    ("requests", {"cpu": "-1"}, "requests.cpu: invalid quantity '-1': must not be negative"),
    ("requests", {"cpu": -1}, "requests.cpu: invalid quantity -1: must not be negative"),
    ("requests", {"cpu": "1" * 5000}, "requests.cpu: invalid quantity '11111111111111111111'... (5000 characters)"),
    ("requests", {"memory": "1e999"}, "requests.memory: invalid quantity '1e999': exponent out of range"),
    ("requests", {"cpu": None}, "requests.cpu: invalid quantity None"),
    ("requests", ["cpu"], "requests: expected a mapping"),
    ("tolerations", [{"operator": "Sometimes"}], "spec.devices.tolerations[0].operator"),
    ("per_round", 0, "spec.devices.perRound"),
])
def test_one_unreadable_request_is_rejected_alone(field, value, message):
    """Issue 12: cpu "-1" or a 5000-digit quantity on one task used to make the decision raise for every task."""
    bad = node_task("ns/bad", priority=100, **{field: value})
    good_nodes, good_shards = node_task("ns/good"), shard_task("ns/shards")
    result = select_devices([bad, good_nodes, good_shards], fleet(), [])
    rejected = result.tasks["ns/bad"]
    assert rejected.rejected and not rejected.devices and message in rejected.waiting_reason
    assert rejected.waiting_reason.startswith("task ns/bad: ")
    assert nodes_of(result, "ns/good") and result.tasks["ns/shards"].devices
    assert not result.tasks["ns/good"].rejected and not result.tasks["ns/good"].waiting_reason


def test_duplicate_tasks_are_rejected():
    with pytest.raises(ValueError, match="requested twice"):
        select_devices([node_task(), node_task()], fleet(), [])


# --- estimates and fairness -----------------------------------------------------------------------------------------

def test_gpu_tasks_are_estimated_from_gpu_labels():
    nodes = [make_node("t4", gpus=1, gpu_product="Tesla-T4"), make_node("a100", gpus=1,
                                                                        gpu_product="NVIDIA-A100-SXM4-40GB")]
    result = select_devices([node_task(per_round=2, policy="fastest", requests={"nvidia.com/gpu": 1})], nodes, [])
    slots = result.tasks["ns/a"].devices
    assert [s.node for s in slots] == ["a100", "t4"]
    assert slots[0].estimated_seconds < slots[1].estimated_seconds


def test_update_train_estimate_is_an_ewma():
    assert update_train_estimate(None, 10.0) == 10.0
    assert update_train_estimate(10.0, 20.0, alpha=0.5) == 15.0
    assert update_train_estimates({"a": 10.0}, {"a": 20.0, "b": 4.0}, alpha=0.5) == {"a": 15.0, "b": 4.0}
    for bad in (float("nan"), -1.0, "3"):
        with pytest.raises(ValueError, match="observed train seconds"):
            update_train_estimate(1.0, bad)


def test_jain_index():
    assert jain_index([3, 3, 3]) == 1.0
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([]) == 1.0
    assert math.isclose(jain_index([1, 2]), 9 / 10)


# --- the request from a FederatedTask -------------------------------------------------------------------------------

def test_build_device_request_reads_spec_and_status():
    from fedtask_operator.core.scheduling import build_device_request
    from fedtask_operator.core.spec import parse_task

    task = parse_task({
        "apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "vision", "namespace": "ml"},
        "spec": {"data": {"source": "hostPath"},
                 "devices": {"perRound": 3, "selector": {"matchLabels": {"gpu": "yes"}},
                             "resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": 1}},
                             "tolerations": [{"key": "gpu", "operator": "Exists"}]},
                 "scheduling": {"priority": 7, "policy": "fastest"}},
        "status": {"round": 4, "participation": {"n1": 2}, "trainSecondsEstimate": {"n1": 3.5},
                   "waitingSince": "2026-01-01T00:00:00Z",
                   "devices": [{"device": "n1", "node": "n1", "result": {"num_samples": 640}}]},
    })
    request = build_device_request(task, now=5.0)
    assert (request.task, request.per_round, request.node_devices, request.priority, request.policy) == (
        "ml/vision", 3, True, 7, "fastest")
    assert request.requests == {"cpu": "500m", "nvidia.com/gpu": 1}
    assert request.selector["matchLabels"] == {"gpu": "yes"}
    assert request.tolerations[0]["key"] == "gpu" and request.tolerations[0]["operator"] == "Exists"
    assert request.participation == {"n1": 2} and request.train_seconds == {"n1": 3.5}
    assert request.samples == {"n1": 640} and request.round == 4
    assert request.waiting_since == 1767225600.0
    nodes = [make_node("n1", gpus=1, labels={"gpu": "yes"}, taints=[{"key": "gpu", "effect": "NoSchedule"}])]
    result = select_devices([build_device_request(task, now=5.0)], nodes, [])
    assert "1 of 1 nodes qualify" in result.tasks["ml/vision"].waiting_reason  # perRound 3 > 1 node


def test_a_limit_only_gpu_is_requested_and_pins_the_task_to_gpu_nodes():
    # Kubernetes defaults a missing request to the limit (and fedtask writes the request out for extended resources),
    # so the scheduler counts it: a task asking `limits: {nvidia.com/gpu: 1}` never lands on a CPU node.
    from fedtask_operator.core.scheduling import build_device_request
    from fedtask_operator.core.spec import parse_task

    task = parse_task({
        "apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "gpu", "namespace": "ml"},
        "spec": {"data": {"source": "hostPath"},
                 "devices": {"perRound": 1, "resources": {"requests": {"cpu": "500m"},
                                                          "limits": {"nvidia.com/gpu": 1, "cpu": "2"}}}}})
    request = build_device_request(task, now=5.0)
    assert request.requests == {"cpu": "500m", "nvidia.com/gpu": 1}  # the request wins over the limit when given
    nodes = [make_node("cpu-only", cpu="64"), make_node("gpu", gpus=1)]
    assert nodes_of(select_devices([request], nodes, []), "ml/gpu") == ["gpu"]
    nodes = [make_node("cpu-only", cpu="64")]
    assert "short of nvidia.com/gpu" in select_devices([request], nodes, []).tasks["ml/gpu"].waiting_reason


def test_shards_of_competing_tasks_spread_over_equal_nodes():
    nodes = [make_node("n0", cpu="8"), make_node("n1", cpu="8")]
    result = select_devices([shard_task("ns/s1"), shard_task("ns/s2")], nodes, [])
    assert sorted(nodes_of(result, "ns/s1") + nodes_of(result, "ns/s2")) == ["n0", "n1"]


# --- device pools (builtin data) ---------------------------------------------------------------------------------

def pool_task(name, pool="", per_round=2, shard_count=6, **kwargs):
    return DeviceRequest(task=name, per_round=per_round, requests={"cpu": "100m"}, shard_count=shard_count, pool=pool,
                         **kwargs)


def devices_of(assignment, task):
    return [slot.device for slot in assignment.tasks[task].devices]


def test_tasks_naming_one_pool_share_its_devices_one_task_per_device():
    nodes = [make_node("n0", cpu="16"), make_node("n1", cpu="16")]
    tasks = [pool_task(f"ns/t{i}", pool="shared", per_round=2, shard_count=6) for i in range(3)]
    result = select_devices(tasks, nodes, [])
    chosen = [devices_of(result, f"ns/t{i}") for i in range(3)]
    assert all(len(devices) == 2 for devices in chosen)
    assert len({d for devices in chosen for d in devices}) == 6  # six devices, each trains one task this period
    # a fourth task of the pool finds no free device and waits, saying why
    result = select_devices(tasks + [pool_task("ns/t3", pool="shared", per_round=1, shard_count=6)], nodes, [])
    assert "higher-priority tasks of the pool take its free devices" in result.tasks["ns/t3"].waiting_reason
    # tasks with their own devices (no pool) each have a d000 of their own
    own = select_devices([pool_task("ns/a", per_round=6), pool_task("ns/b", per_round=6)], nodes, [])
    assert devices_of(own, "ns/a") == devices_of(own, "ns/b") == [f"d{i:03d}" for i in range(6)]


def test_a_device_of_the_pool_training_for_another_task_is_not_offered():
    from fedtask_operator.core.naming import POOL_LABEL
    nodes = [make_node("n0", cpu="16")]
    busy = [make_train_pod("ns/other", "n0", device=f"d00{i}") for i in range(4)]
    for pod in busy:
        pod["metadata"]["labels"].update({"fedtask.io/device": pod["metadata"]["name"].rsplit("-", 1)[1],
                                          POOL_LABEL: "shared"})
    result = select_devices([pool_task("ns/t", pool="shared", per_round=2, shard_count=6)], nodes, busy)
    assert sorted(devices_of(result, "ns/t")) == ["d004", "d005"]
    result = select_devices([pool_task("ns/t", pool="shared", per_round=3, shard_count=6)], nodes, busy)
    assert result.tasks["ns/t"].waiting_reason == (
        "pool ns/shared: 2 of 6 devices free, the others train (ns/other: 4); needs 3")
    # the same pod without the pool label is another task's own device: it does not count
    for pod in busy:
        del pod["metadata"]["labels"][POOL_LABEL]
    assert len(devices_of(select_devices([pool_task("ns/t", pool="shared", per_round=3, shard_count=6)], nodes,
                                         busy), "ns/t")) == 3


def test_priorities_decide_inside_a_pool():
    nodes = [make_node("n0", cpu="16")]
    low = pool_task("ns/low", pool="p", per_round=3, shard_count=4, priority=0)
    high = pool_task("ns/high", pool="p", per_round=3, shard_count=4, priority=5)
    result = select_devices([low, high], nodes, [])
    assert len(devices_of(result, "ns/high")) == 3 and result.tasks["ns/low"].waiting_reason


def test_pool_tasks_are_chosen_jointly_by_their_costs():
    # Two time-fair tasks share 4 devices, 2 each: "a" has never used d000/d001 and "b" never d002/d003; jointly
    # each gets the devices it is behind on (greedy in priority order would give "a" its cheapest first anyway,
    # so make them compete for the same fast devices instead: both prefer d000, d001 by time).
    nodes = [make_node("n0", cpu="16")]
    seconds = {"d000": 1.0, "d001": 1.0, "d002": 5.0, "d003": 5.0}
    a = pool_task("ns/a", pool="p", per_round=2, shard_count=4, train_seconds=seconds, fairness_weight=1.0,
                  participation={"d000": 9, "d001": 9, "d002": 0, "d003": 0})
    b = pool_task("ns/b", pool="p", per_round=2, shard_count=4, train_seconds=seconds, fairness_weight=1.0,
                  participation={"d000": 0, "d001": 0, "d002": 9, "d003": 9})
    result = select_devices([a, b], nodes, [])
    assert sorted(devices_of(result, "ns/b")) == ["d000", "d001"]
    assert sorted(devices_of(result, "ns/a")) == ["d002", "d003"]
    assert result.tasks["ns/a"].optimal and result.tasks["ns/a"].solver in ("independent", "exact")
