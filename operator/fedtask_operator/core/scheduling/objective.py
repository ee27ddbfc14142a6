"""The learning period's objective: time cost plus weighted unfairness (pure).

For one decision (which devices train which task this period), every served task t pays

    cost_t = T_t / tau_t  +  w_t * U_t

- T_t: the task's round time, its slowest selected device's estimated seconds (the time model, estimates.py);
- tau_t: the median estimate over the task's candidates: time is counted in "typical rounds", so tasks with long and
  short rounds weigh alike and a weight means the same on every fleet;
- U_t = N * Var(p') / (2 k max(1, m)): the variance of the task's participation counts after the period (p' = p + 1
  for the selected devices, over the N devices of the task's universe), scaled by the mean participation m before the
  period and by the devices per round k. The scale makes the weight a plain exchange rate: moving a whole round (k
  devices) from devices one mean participation ahead to devices one mean participation behind lowers w * U by w,
  whatever the round number; with an unscaled variance a weight would mean less and less as participation grows;
- w_t: spec.scheduling.fairnessWeight, else the operator default (DEFAULT_FAIRNESS_WEIGHT). w = 0 gives the fastest
  feasible choice.

The period's cost is the sum over its tasks (each task waits only for its own devices: rounds are not synchronised
across tasks). Since Var(p') = (Q + sum over the selected of (2 p_i + 1)) / N - ((S + k) / N)^2 with Q, S the sums of
p^2 and p, U_t is linear in the selected set: selecting device i costs the *fairness price* w (p_i + 1/2) / (k max(1,
m)) plus a constant. The solver (joint.py) therefore minimises sum_t (T_t / tau_t + sum of the prices of t's devices).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

DEFAULT_FAIRNESS_WEIGHT = 2.0  # see docs/internals.md (Scheduler): the trade-off this default sits on
MAX_FAIRNESS_WEIGHT = 1000.0
TIE = 1e-6  # tie-break prices (data size, exploration, a random policy's order) stay far below any real price


def fairness_prices(participation: np.ndarray, mean: float, per_round: int, weight: float) -> np.ndarray:
    """The fairness price of selecting each device (participation of each candidate given)."""
    return weight * (np.asarray(participation, dtype=float) + 0.5) / (per_round * max(1.0, mean))


def unfairness(participation_after: np.ndarray, mean_before: float, per_round: int) -> float:
    """U = N Var(p') / (2 k max(1, m)) over the task's device universe (see the module docstring)."""
    values = np.asarray(participation_after, dtype=float)
    if not len(values):
        return 0.0
    return float(len(values) * values.var() / (2 * per_round * max(1.0, mean_before)))


def jain_of(values: npt.ArrayLike) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2) of a participation vector (1.0 when empty or all zero)."""
    values = np.asarray(values, dtype=float)
    squares = float((values * values).sum())
    if not len(values) or squares == 0:
        return 1.0
    return float(values.sum() ** 2 / (len(values) * squares))


def time_scale(estimates: np.ndarray) -> float:
    """tau: the median estimate of the task's candidates (1.0 when there are none or they are all zero)."""
    size = len(estimates)
    if not size:
        return 1.0
    middle = np.partition(estimates, [(size - 1) // 2, size // 2])  # the median without a full sort
    value = float(middle[(size - 1) // 2] + middle[size // 2]) / 2
    return value if value > 0 else 1.0
