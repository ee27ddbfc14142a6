"""Partitioners: disjoint, deterministic, class counts; the shared set is class-balanced and in no shard."""
import numpy as np
import pytest

from fedtask_worker.errors import BadInput
from fedtask_worker.partition import all_shards, device_indices, shared_indices

LABELS = np.random.default_rng(0).integers(0, 10, 3000)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
@pytest.mark.parametrize("shared", [0.0, 0.05])
def test_shards_are_disjoint_and_cover_everything_but_the_shared_set(scheme, shared):
    shards = all_shards(LABELS, scheme, 7, seed=3, alpha=0.3, classes_per_device=2, shared_fraction=shared)
    joined = np.concatenate(shards)
    assert len(joined) == len(np.unique(joined))
    held = shared_indices(LABELS, shared) if shared else np.empty(0, dtype=np.int64)
    assert not np.intersect1d(joined, held).size
    assert len(joined) + len(held) == len(LABELS)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes"])
def test_a_shard_depends_only_on_its_inputs(scheme):
    first = device_indices(LABELS, scheme, 2, 5, seed=11, alpha=0.5)
    again = device_indices(LABELS.copy(), scheme, 2, 5, seed=11, alpha=0.5)  # a fresh array: no cache hit
    np.testing.assert_array_equal(first, again)
    other_seed = device_indices(LABELS.copy(), scheme, 2, 5, seed=12, alpha=0.5)
    assert not np.array_equal(first, other_seed)


def test_iid_shards_have_equal_sizes_and_all_classes():
    shards = all_shards(LABELS, "iid", 6)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(len(np.unique(LABELS[shard])) == 10 for shard in shards)


def test_classes_scheme_gives_each_device_few_classes():
    labels = np.repeat(np.arange(10), 100)
    for shard in all_shards(labels, "classes", 10, seed=1, classes_per_device=2):
        assert len(np.unique(labels[shard])) <= 2
        assert len(shard) == 100


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_even():
    def skew(alpha):
        shards = all_shards(LABELS, "dirichlet", 5, seed=4, alpha=alpha)
        return np.mean([np.bincount(LABELS[s], minlength=10).max() / max(len(s), 1) for s in shards])

    assert skew(0.05) > 0.4 > skew(1000.0)


def test_shared_set_is_class_balanced():
    shared = shared_indices(LABELS, 0.1)
    counts = np.bincount(LABELS[shared], minlength=10)
    expected = np.round(0.1 * np.bincount(LABELS, minlength=10))
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("call, message", [
    (lambda: device_indices(LABELS, "iid", 5, 5), "--device-index 5"),
    (lambda: device_indices(LABELS, "zipf", 0, 5), "--partition 'zipf'"),
    (lambda: device_indices(LABELS, "dirichlet", 0, 5, alpha=0), "--alpha"),
    (lambda: shared_indices(LABELS, 1.5), "--shared-fraction"),
])
def test_bad_partition_settings_are_named(call, message):
    with pytest.raises(BadInput, match=message):
        call()
