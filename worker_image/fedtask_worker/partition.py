"""Simulated devices: deterministic, disjoint shards of a dataset's train split, and the server's shared set.

A shard is a function of (labels, scheme, seed, device index, device count) alone. The globally shared set (a
class-balanced fraction of the train split) is carved out first and never appears in any shard. Real-valued targets
(regression, reconstruction) have no classes: their shared set is a uniform random fraction, and only iid applies.
"""
from __future__ import annotations

import functools

import numpy as np

from .errors import BadInput

SCHEMES = ("iid", "dirichlet", "classes")


def shared_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Class-balanced: round(fraction * count) samples of every class, chosen by `seed`; sorted."""
    if not 0 <= fraction < 1:
        raise BadInput(f"--shared-fraction {fraction} must be in [0, 1)")
    return _shared(_key(labels), fraction, seed)


def _key(labels: np.ndarray) -> _Labels:
    return _Labels(np.asarray(labels))


class _Labels:
    """Hashable by identity+length so results can be cached for the process's datasets."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __hash__(self) -> int:
        return hash((id(self.labels), len(self.labels)))

    def __eq__(self, other) -> bool:
        return isinstance(other, _Labels) and other.labels is self.labels


def _class_labels(labels: np.ndarray) -> bool:
    return labels.ndim == 1 and labels.dtype.kind in "iu"


@functools.lru_cache(maxsize=64)
def _shared(key: _Labels, fraction: float, seed: int) -> np.ndarray:
    labels = key.labels
    rng = np.random.default_rng([seed, 0x5EED])
    if not _class_labels(labels):
        return np.sort(rng.permutation(len(labels))[:int(round(fraction * len(labels)))]).astype(np.int64)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = int(round(fraction * len(members)))
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def shared_slice(labels: np.ndarray, fraction: float, share: float, seed: int, device_index: int) -> np.ndarray:
    """The slice of the shared set (shared_indices(labels, fraction)) one device also trains on: round(share * size)
    samples chosen by (seed, device index), so devices get different slices."""
    if not 0 < share <= 1:
        raise BadInput(f"--shared-to-devices {share} must be in (0, 1]")
    if fraction <= 0:
        raise BadInput("--shared-to-devices needs a shared set: --shared-fraction > 0 (spec.data.shared.fraction)")
    shared = shared_indices(labels, fraction)
    rng = np.random.default_rng([seed, device_index, 0x51A7])
    return np.sort(rng.permutation(shared)[:int(round(share * len(shared)))]).astype(np.int64)


def device_indices(labels: np.ndarray, scheme: str, device_index: int, device_count: int, seed: int = 0,
                   alpha: float = 0.5, classes_per_device: int = 2, shared_fraction: float = 0.0) -> np.ndarray:
    """Indices (into the train split) of one device's shard; shards of one device_count are disjoint."""
    if scheme not in SCHEMES:
        raise BadInput(f"--partition {scheme!r} is not one of {', '.join(SCHEMES)}")
    if device_count < 1 or not 0 <= device_index < device_count:
        raise BadInput(f"--device-index {device_index} must be in [0, --device-count {device_count})")
    if scheme == "dirichlet" and not alpha > 0:
        raise BadInput(f"--alpha {alpha} must be > 0")
    if scheme == "classes" and classes_per_device < 1:
        raise BadInput(f"--classes-per-device {classes_per_device} must be >= 1")
    if scheme != "iid" and not _class_labels(np.asarray(labels)):
        raise BadInput(f"--partition {scheme} splits by class label; this dataset has real-valued targets "
                       "(only iid applies)")
    shards = all_shards(labels, scheme, device_count, seed, alpha, classes_per_device, shared_fraction)
    return shards[device_index]


def all_shards(labels: np.ndarray, scheme: str, device_count: int, seed: int = 0, alpha: float = 0.5,
               classes_per_device: int = 2, shared_fraction: float = 0.0) -> tuple[np.ndarray, ...]:
    return _all_shards(_key(labels), scheme, device_count, seed, float(alpha), int(classes_per_device),
                       float(shared_fraction))


@functools.lru_cache(maxsize=64)
def _all_shards(key: _Labels, scheme: str, device_count: int, seed: int, alpha: float, classes_per_device: int,
                shared_fraction: float) -> tuple[np.ndarray, ...]:
    labels = key.labels
    pool = np.arange(len(labels))
    if shared_fraction > 0:
        pool = np.setdiff1d(pool, shared_indices(labels, shared_fraction), assume_unique=True)
    rng = np.random.default_rng([seed, device_count])
    if scheme == "iid":
        parts = np.array_split(rng.permutation(pool), device_count)
    elif scheme == "dirichlet":
        buckets: list[list[np.ndarray]] = [[] for _ in range(device_count)]
        for label in np.unique(labels[pool]):
            members = rng.permutation(pool[labels[pool] == label])
            proportions = rng.dirichlet(np.full(device_count, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for device, piece in enumerate(np.split(members, cuts)):
                buckets[device].append(piece)
        parts = [np.concatenate(pieces) for pieces in buckets]
    else:  # classes: McMahan et al. 2017 — sort by label, cut into shards, deal classes_per_device to each device
        shuffled = rng.permutation(pool)
        by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
        pieces = np.array_split(by_label, device_count * classes_per_device)
        order = rng.permutation(len(pieces))
        parts = [np.concatenate([pieces[i] for i in order[d * classes_per_device:(d + 1) * classes_per_device]])
                 for d in range(device_count)]
    return tuple(np.sort(part).astype(np.int64) for part in parts)
