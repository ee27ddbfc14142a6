"""The task's fairness (Jain's index of participation, status.fairness) is exported as a metric (issue 11, 3)."""
from __future__ import annotations

from prometheus_client import REGISTRY

from fedtask_operator.kube import metrics


def fairness(task: str) -> float | None:
    return REGISTRY.get_sample_value("fedtask_task_fairness", {"namespace": "fairness-test", "task": task})


def test_the_status_fairness_becomes_the_task_s_fairness_gauge_and_follows_it():
    metrics.record_status_change("fairness-test", "a", None, {"round": 1, "fairness": 0.5})
    metrics.record_status_change("fairness-test", "b", None, {"round": 1, "fairness": 1.0})
    assert (fairness("a"), fairness("b")) == (0.5, 1.0)

    metrics.record_status_change("fairness-test", "a", {"round": 1, "fairness": 0.5}, {"round": 2, "fairness": 0.8125})
    assert fairness("a") == 0.8125


def test_a_status_without_fairness_leaves_the_gauge_alone():
    metrics.record_status_change("fairness-test", "c", None, {"round": 1})
    assert fairness("c") is None
    metrics.record_status_change("fairness-test", "c", None, {"round": 2, "fairness": 0.25})
    metrics.record_status_change("fairness-test", "c", None, {"round": 3})
    assert fairness("c") == 0.25
