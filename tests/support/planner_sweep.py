"""Everything the planner asks an API server to store, harvested for the real API server to judge (test_lifecycle's
sweep): every pod manifest and every status write of

- the planner scenarios of tests/unit/test_planner.py (init, train, aggregate, adjust, publish; retries, bad input,
  stragglers, quorum, suspend and resume, deadlines, restarts; all but SKIPPED_SCENARIOS), driven by its pure
  simulator (tests/support/planner.py) through the runtimes' own apply_plan, and
- whole tasks planned with the operator's own RuntimeConfig (the installed chart's flags and environment, through
  kube.cli.parse_config and reconciler.build_runtime_config): a builtin-data task with a GPU request, a node-mode
  task publishing to every device node, and one whose pods fail and are retried.

Nothing here is hand-written: the pods come from core/pods.py's builders as the planner calls them, the statuses
from the planner.
"""
from __future__ import annotations

import copy
import inspect
import json
import re
from dataclasses import dataclass, field

import pytest

from fedtask_operator.core.planner import Observed, plan_task
from fedtask_operator.core.pods import RuntimeConfig
from tests.support import planner as simulator
from tests.unit import test_planner  # its tests are the sweep's scenarios


@dataclass
class Harvest:
    pods: list[dict] = field(default_factory=list)  # every manifest a plan created
    writes: list[tuple[dict, dict]] = field(default_factory=list)  # (status before, status after) per status write
    scenarios: list[str] = field(default_factory=list)


def variant(value) -> str:
    """A JSON value with every digit made 0: writes that differ only in numbers (rounds, times, counts, device
    numbers) are one variant for the API server's validation (the lengths and every other character stay)."""
    return re.sub(r"\d", "0", json.dumps(value, sort_keys=True))


# The costliest scenarios of test_planner add no pod and few status variants the others lack: left out of the sweep
# to keep the cluster suite short.
SKIPPED_SCENARIOS = ("test_a_crash_at_any_step_neither_loses_nor_repeats_a_round",
                     "test_random_histories_keep_the_invariants")


def _recording(harvest: Harvest, original):
    """A simulator.Cluster.apply (tests/support/planner.py) that also puts each applied plan's pods and status change
    into the harvest."""

    def apply(cluster, plan, crash_after=None):
        before = copy.deepcopy(cluster.task.get("status") or {})
        original(cluster, plan, crash_after)
        harvest.pods.extend(copy.deepcopy(plan.create))
        after = cluster.task.get("status") or {}
        if after != before:
            harvest.writes.append((before, copy.deepcopy(after)))
    return apply


def _planner_scenarios():
    """(name, zero-argument callable) for every test of test_planner, parametrized ones once per parameter."""
    for name, function in sorted(vars(test_planner).items()):
        if not name.startswith("test_") or not callable(function) or name in SKIPPED_SCENARIOS:
            continue
        marks = [m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]
        if marks:
            (argnames, values), = [m.args[:2] for m in marks]
            for value in values:
                yield f"{name}[{value}]", lambda f=function, a=argnames, v=value: f(**{a: v})
        elif not inspect.signature(function).parameters or hasattr(function, "hypothesis"):
            yield name, function


class _Configured(simulator.Cluster):
    """The planner tests' simulator planning with a given RuntimeConfig (the operator's) instead of its own."""

    config: RuntimeConfig

    def plan(self, assignment=None):
        observed = Observed(pods=copy.deepcopy(list(self.pods.values())), now=self.now, nodes=self.nodes)
        return plan_task(copy.deepcopy(self.task), observed, self.config, assignment)


def _operator_scenarios(config: RuntimeConfig, namespace: str):
    def cluster_for(task: dict, **kwargs) -> _Configured:
        task["metadata"]["namespace"] = namespace
        cluster = _Configured(task, **kwargs)
        cluster.config = config
        return cluster

    def gpu_builtin():
        task = simulator.make_task(devices={"count": 3, "perRound": 2, "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi", "nvidia.com/gpu": 1}}}, rounds={"max": 2})
        cluster_for(task).run_to_end()

    def node_mode_publish():
        nodes = [simulator.node("edge-b"), simulator.node("edge-a"), simulator.node("server", False)]
        task = simulator.make_task(data={"source": "hostPath"}, devices={"count": None, "perRound": 2},
                                      publish={"toDevices": True}, rounds={"max": 2})
        task["spec"]["devices"].pop("count")
        cluster_for(task, devices=["edge-a", "edge-b"], nodes=nodes).run_to_end()

    def failures_and_retries():
        cluster = cluster_for(simulator.make_task(rounds={"max": 2}))
        for _ in range(200):
            cluster.reconcile()
            if cluster.status.get("phase") in ("Succeeded", "Failed"):
                cluster.reconcile()
                return
            cluster.tick(1)
            for name in cluster.active():
                if name.endswith(("-init", "-train-d001", "-aggregate", "-adjust")):  # first attempts fail
                    cluster.fail(name, exit_code=1, message="RuntimeError: boom")
                else:
                    cluster.succeed(name)
        raise AssertionError("the failing task did not finish")

    yield "operator-config: builtin data, GPU request", gpu_builtin
    yield "operator-config: node mode, publish to devices", node_mode_publish
    yield "operator-config: failed pods retried", failures_and_retries


def harvest(config: RuntimeConfig, namespace: str) -> Harvest:
    """Run every scenario, recording what its plans create and write."""
    result = Harvest()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulator.Cluster, "apply", _recording(result, simulator.Cluster.apply))
        for name, scenario in [*_planner_scenarios(), *_operator_scenarios(config, namespace)]:
            scenario()
            result.scenarios.append(name)
    return result
