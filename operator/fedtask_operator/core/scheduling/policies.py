"""The selection policies and the orders the order policies (random, round-robin) prefer devices in (pure); `time-fair`
and `fastest` minimise the period's cost (objective.py)."""
from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from .types import DeviceRequest

POLICIES = ("time-fair", "fastest", "random", "round-robin")
TIME_POLICIES = ("time-fair", "fastest")


def median(values: npt.ArrayLike) -> float:
    ordered = np.sort(np.asarray(values, dtype=float))
    middle = len(ordered) // 2
    return float(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)


def _seed(request: DeviceRequest) -> int:
    return int.from_bytes(hashlib.sha256(f"{request.task}/{request.round}".encode()).digest()[:8], "little")


def random_permutation(request: DeviceRequest, size: int) -> np.ndarray:
    """A permutation seeded by the task and the round: the same period always draws the same order."""
    return np.random.default_rng(_seed(request)).permutation(size)


def random_shift(request: DeviceRequest) -> float:
    """A number in [0, 1) drawn from the task and the round (the same period always draws the same)."""
    return _seed(request) / 2.0**64


def rotation_order(request: DeviceRequest, participation: np.ndarray) -> np.ndarray:
    """Least participation first; ties rotate with the round so every device gets its turn."""
    size = len(participation)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    rotation = (np.arange(size) - (request.round - 1) * request.per_round) % size
    return np.lexsort((rotation, participation))
