"""Training-time estimates per (device, task), their refinement from observed pod durations, and fairness (pure).

The resource model is deliberately simple: a node's training speed in "CPU-core equivalents" is its allocatable CPU
(capped by the task's CPU limit) or, for tasks that request a GPU, its GPU's speed from the product/memory labels.
A task's seconds per sample per core-equivalent start at a default and the runtimes refine per-device estimates with
`update_train_estimate` from observed train-pod durations, which then replace the resource model for that device.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

SECONDS_PER_SAMPLE_PER_CORE = 0.002  # small MLP/CNN on CPU; only the ordering between devices matters at first
DEFAULT_SAMPLES = 1000  # a device's sample count when nothing is known
EWMA_ALPHA = 0.3  # weight of the newest observation
MAX_CPU_CORES = 64.0
DEFAULT_GPU_SPEED = 16.0  # core-equivalents of an unknown GPU
# Relative training throughput in core-equivalents; first match in the product label wins.
GPU_PRODUCT_SPEEDS = (
    ("H200", 80.0), ("H100", 64.0), ("A100", 40.0), ("L40", 36.0), ("A6000", 30.0), ("V100", 24.0), ("A10", 20.0),
    ("L4", 18.0), ("3090", 24.0), ("4090", 36.0), ("T4", 10.0), ("P100", 10.0), ("K80", 4.0),
)
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, as set by NVIDIA GPU feature discovery


def is_gpu_resource(name: str) -> bool:
    return name.endswith("/gpu")


def gpu_speed(labels: Mapping[str, str]) -> float:
    """Core-equivalents of the node's GPU from its NVIDIA feature-discovery labels."""
    product = str(labels.get(GPU_PRODUCT_LABEL, "")).upper()
    for marker, speed in GPU_PRODUCT_SPEEDS:
        if marker in product:
            return speed
    memory = re.fullmatch(r"\d+", str(labels.get(GPU_MEMORY_LABEL, "")))
    if memory:  # unknown product: bigger cards are faster, roughly with the square root of their memory
        return DEFAULT_GPU_SPEED * math.sqrt(max(int(memory.group()), 1024) / 16384)
    return DEFAULT_GPU_SPEED


def update_train_estimate(previous: float | None, observed: float, alpha: float = EWMA_ALPHA) -> float:
    """The exponentially weighted mean of a device's train-pod durations after one more observation."""
    if not (isinstance(observed, (int, float)) and math.isfinite(observed) and observed >= 0):
        raise ValueError(f"observed train seconds must be a finite number >= 0, got {observed!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if previous is None or not math.isfinite(previous):
        return float(observed)
    return (1 - alpha) * float(previous) + alpha * float(observed)


def update_train_estimates(estimates: Mapping[str, float], observed: Mapping[str, float],
                            alpha: float = EWMA_ALPHA) -> dict[str, float]:
    """A new device -> estimate map with every observation of one round folded in."""
    updated = dict(estimates)
    for device, seconds in observed.items():
        updated[device] = update_train_estimate(estimates.get(device), seconds, alpha)
    return updated


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1.0 when all equal, 1/n when one device has everything."""
    values = [float(v) for v in values]
    total_squares = sum(v * v for v in values)
    if not values or total_squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * total_squares)
