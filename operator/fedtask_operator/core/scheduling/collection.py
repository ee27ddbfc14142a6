"""Learning periods as both runtimes take them (pure): when a period's joint decision is due, its number, and the
decision itself.

A period collects the tasks that need devices. Its decision is due `collection_window` seconds after the first of
them became ready (a request's `ready_since`: when the task began to wait, or the last period it took part in and
still waits after), or at once when every task that could still join is already in (nobody else is running, or all
are waiting), or when a task needs replacements in the middle of a round. Every task that needs devices then is
assigned in the one decision (`select_devices`), priorities respected inside it. All of this is read from the
requests, that is from the tasks' status (waitingSince, periodTime, period): an operator that restarts finds the same
window and the same period number.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from ..status_types import TaskStatusDict
from .fleet import Fleet, KubeObjects, PodObjects
from .objective import DEFAULT_FAIRNESS_WEIGHT
from .select import select_devices
from .types import Assignment, DeviceRequest

DEFAULT_COLLECTION_WINDOW_SECONDS = 2.0
DUE_TOLERANCE = 0.001  # seconds: a requeue rounded to milliseconds may come back this much early


@dataclasses.dataclass(frozen=True)
class SchedulingConfig:
    """The runtimes' scheduling settings (operator flags, `fedtask run` options)."""

    collection_window: float = DEFAULT_COLLECTION_WINDOW_SECONDS  # seconds a period waits for more tasks
    fairness_weight: float = DEFAULT_FAIRNESS_WEIGHT  # the weight of tasks that set none

    def __post_init__(self) -> None:
        if not (math.isfinite(self.collection_window) and self.collection_window >= 0):
            raise ValueError(f"collection window must be a number of seconds >= 0, got {self.collection_window!r}")
        if not (math.isfinite(self.fairness_weight) and self.fairness_weight >= 0):
            raise ValueError(f"fairness weight must be a number >= 0, got {self.fairness_weight!r}")


@dataclasses.dataclass(frozen=True)
class PeriodDecision:
    due: bool
    retry_after: float | None = None  # not due: seconds until it is
    period: int | None = None  # due: the period's number
    assignment: Assignment | None = None  # due: every requesting task's devices (or why it waits)


def next_period_number(statuses: Iterable[TaskStatusDict | None]) -> int:
    """1 + the highest period any task's status records (1 for the first)."""
    return 1 + max((int((status or {}).get("period") or 0) for status in statuses), default=0)


def due_at(requests: list[DeviceRequest], window: float, active: Iterable[str]) -> float:
    """When the decision over `requests` is due (epoch seconds; -inf: now). `active`: the keys of every task that
    could still join (not finished, not suspended)."""
    if not requests or any(request.replacement for request in requests):
        return -math.inf
    if set(active) <= {request.task for request in requests}:
        return -math.inf
    starts = [request.ready_since for request in requests if request.ready_since is not None]
    return min(starts) + window if starts else -math.inf


def with_default_weight(requests: list[DeviceRequest], weight: float) -> list[DeviceRequest]:
    return [request if request.fairness_weight is not None else dataclasses.replace(request, fairness_weight=weight)
            for request in requests]


def decide_period(requests: list[DeviceRequest], nodes: Fleet | KubeObjects, pods: PodObjects, now: float, *,
                  active: Iterable[str], config: SchedulingConfig, period: int) -> PeriodDecision:
    """The period's decision when it is due (numbered `period`), else when to look again."""
    if not requests:
        return PeriodDecision(due=False)
    due = due_at(requests, config.collection_window, active)
    if due > now + DUE_TOLERANCE:
        return PeriodDecision(due=False, retry_after=round(due - now, 3))
    assignment = select_devices(with_default_weight(requests, config.fairness_weight), nodes, pods, now,
                                period_number=period)
    return PeriodDecision(due=True, period=period, assignment=assignment)
