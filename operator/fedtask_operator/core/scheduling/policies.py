"""The selection policies: the order each one prefers devices in, and the fairness bounds of `time-fair` (pure)."""
from __future__ import annotations

import hashlib

import numpy as np

from .types import DeviceRequest

POLICIES = ("time-fair", "fastest", "random", "round-robin")
TIME_POLICIES = ("time-fair", "fastest")
DEFAULT_FAIRNESS_BOUND = 2.0  # rounds a device may fall behind its task's mean participation under `time-fair`...
DEFAULT_FAIRNESS_SHARE = 0.5  # ...or this share of the mean, whichever is larger (slow devices train less often)
FAIRNESS_AHEAD = 2.0  # time-fair: a device more than this many times the mean (plus the allowed lag) ahead sits out


def allowed_lag(request: DeviceRequest, mean: float) -> float:
    """How far (in rounds) a device's participation may fall behind the task's mean before `time-fair` must pick it:
    the absolute bound early on, a share of the mean later, so fast devices may train more often than slow ones
    while every device keeps training at a steady fraction of the mean rate."""
    bound = request.fairness_bound if request.fairness_bound is not None else DEFAULT_FAIRNESS_BOUND
    share = request.fairness_share if request.fairness_share is not None else DEFAULT_FAIRNESS_SHARE
    return max(bound, share * mean)


def ahead_limit(request: DeviceRequest, mean: float) -> float:
    """The participation above which `time-fair` rests a device while others qualify: FAIRNESS_AHEAD times the
    task's mean plus the allowed lag. Without it the few fastest devices train in nearly every cheap round and the
    model drifts to their labels (non-IID); with it the cheap rounds rotate through more devices."""
    return FAIRNESS_AHEAD * mean + allowed_lag(request, mean)


def median(values) -> float:
    ordered = np.sort(np.asarray(values, dtype=float))
    middle = len(ordered) // 2
    return float(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)


def random_permutation(request: DeviceRequest, size: int) -> np.ndarray:
    """A permutation seeded by the task and the round: the same period always draws the same order."""
    seed = int.from_bytes(hashlib.sha256(f"{request.task}/{request.round}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(size)


def rotation_order(request: DeviceRequest, participation: np.ndarray) -> np.ndarray:
    """Least participation first; ties rotate with the round so every device gets its turn."""
    size = len(participation)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    rotation = (np.arange(size) - (request.round - 1) * request.per_round) % size
    return np.lexsort((rotation, participation))
