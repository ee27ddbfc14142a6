"""The compiled weighted-sum kernel (fedtask_worker/_reduce.c): built here, exact, finite-checked, strict on input."""
import numpy as np
import pytest

from fedtask_worker import aggregation
from fedtask_worker.combine import aggregate_files, aggregate_states
from fedtask_worker.errors import BadInput
from tests.support.worker import random_model, write_update

native = aggregation.native_kernel()


def test_the_install_built_the_kernel_and_aggregation_uses_it(monkeypatch):
    monkeypatch.delenv("FEDTASK_AGGREGATE_BACKEND", raising=False)
    assert native is not None, "pip install did not compile fedtask_worker/_reduce.c (is a C compiler installed?)"
    assert aggregation.weighted_sum_backend() == "native"


def sequential(inputs, weights, dtype, start=None):
    """What numpy gives adding one update at a time, in the kernel's order and precision."""
    acc = start.copy() if start is not None else dtype.type(weights[0]) * inputs[0]
    for x, w in list(zip(inputs, weights))[0 if start is not None else 1:]:
        acc = acc + dtype.type(w) * x
    return acc


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("length", [0, 1, 2048, 2 * 2048 + 17])
def test_bit_for_bit_the_sequential_sum(dtype, count, length):
    rng = np.random.default_rng(count * 1000 + length)
    dtype = np.dtype(dtype)
    inputs = [rng.standard_normal(length).astype(dtype) for _ in range(count)]
    weights = list(rng.random(count))
    out = np.full(length, 123.0, dtype=dtype)
    assert native.weighted_sum(out, inputs, weights, False) is True
    np.testing.assert_array_equal(out, sequential(inputs, weights, dtype))

    start = rng.standard_normal(length).astype(dtype)
    out = start.copy()
    assert native.weighted_sum(out, inputs, weights, True) is True
    np.testing.assert_array_equal(out, sequential(inputs, weights, dtype, start))


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_reports_a_non_finite_output(poison):
    inputs = [np.ones(5000, dtype=np.float32) for _ in range(6)]
    inputs[4][4321] = poison
    out = np.empty(5000, dtype=np.float32)
    assert native.weighted_sum(out, inputs, [0.5] * 6, False) is False


def test_reports_an_overflowing_sum():
    inputs = [np.full(10, 3e38, dtype=np.float32) for _ in range(2)]
    out = np.empty(10, dtype=np.float32)
    assert native.weighted_sum(out, inputs, [1.0, 1.0], False) is False
    assert native.weighted_sum(out, inputs, [0.5, 0.5], False) is True


@pytest.mark.parametrize("out, inputs, weights, error, message", [
    (np.empty(4, np.float32), [np.ones(5, np.float32)], [1.0], ValueError, "length"),
    (np.empty(4, np.float32), [np.ones(4, np.float64)], [1.0], ValueError, "format"),
    (np.empty(4, np.int32), [np.ones(4, np.int32)], [1.0], TypeError, "float32 or float64"),
    (np.empty(4, np.float32), [np.ones(4, np.float32)], [1.0, 2.0], ValueError, "one weight per input"),
    (np.empty(4, np.float32), [], [], ValueError, "no inputs"),
    (np.empty(4, np.float32), [np.ones(4, np.float32)], ["x"], TypeError, "must be real number"),
    (np.empty(4, np.float32), [np.ones(8, np.float32)[::2]], [1.0], (ValueError, BufferError), "contiguous"),
])
def test_rejects_mismatched_input(out, inputs, weights, error, message):
    with pytest.raises(error, match=message):
        native.weighted_sum(out, inputs, weights, False)


def test_rejects_a_read_only_output():
    out = np.empty(4, np.float32)
    out.flags.writeable = False
    with pytest.raises((ValueError, BufferError), match="writable|read-only"):
        native.weighted_sum(out, [np.ones(4, np.float32)], [1.0], False)


def test_more_files_than_one_call_takes_match_the_in_memory_mean(tmp_path):
    count = 2 * aggregation.COPYING_SOURCES_PER_CALL + 3
    states = [random_model(seed, {"w": (300, 70), "b": (70,)}) for seed in range(count)]
    samples = [seed + 1 for seed in range(count)]
    paths = {f"file://{tmp_path}/u{index:02d}": write_update(tmp_path / f"u{index:02d}.safetensors", state, n)
             for index, (state, n) in enumerate(zip(states, samples))}
    from_files = aggregate_files(paths).arrays
    in_memory, _ = aggregate_states(states, samples)
    weights = np.array(samples) / sum(samples)
    for name in from_files:
        reference = np.tensordot(weights, np.stack([state[name] for state in states]).astype(np.float64), 1)
        np.testing.assert_allclose(from_files[name], reference, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(from_files[name], in_memory[name])


def test_a_non_finite_update_in_a_later_call_is_named_and_skipped(tmp_path):
    count = aggregation.COPYING_SOURCES_PER_CALL + 4
    states = [random_model(seed, {"w": (50, 50)}) for seed in range(count)]
    states[count - 2]["w"][7, 7] = np.inf
    paths = {f"file://{tmp_path}/u{index:02d}": write_update(tmp_path / f"u{index:02d}.safetensors", state)
             for index, state in enumerate(states)}
    outcome = aggregate_files(paths, on_invalid="skip")
    bad = f"file://{tmp_path}/u{count - 2:02d}"
    assert [rejection.uri for rejection in outcome.rejected] == [bad]
    assert "contains NaN or Inf" in outcome.rejected[0].reason
    assert bad not in outcome.accepted and len(outcome.accepted) == count - 1
    assert np.isfinite(outcome.arrays["w"]).all()


@pytest.mark.parametrize("backend", ["native", "torch", "numpy"])
def test_every_backend_gives_the_weighted_mean(backend, monkeypatch):
    monkeypatch.setenv("FEDTASK_AGGREGATE_BACKEND", backend)
    assert aggregation.weighted_sum_backend() == backend
    states = [random_model(seed, {"w": (64, 33)}) | {"steps": np.array([seed], np.int64)} for seed in range(5)]
    samples = [2, 7, 1, 8, 2]
    out, _ = aggregate_states(states, samples)
    weights = np.array(samples) / sum(samples)
    np.testing.assert_allclose(out["w"], np.tensordot(weights, np.stack([s["w"] for s in states]), 1),
                               rtol=1e-5, atol=1e-6)
    assert out["steps"].dtype == np.int64 and out["steps"][0] == round(float(weights @ np.arange(5)))


def test_an_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FEDTASK_AGGREGATE_BACKEND", "gpu")
    with pytest.raises(BadInput, match="FEDTASK_AGGREGATE_BACKEND='gpu': expected auto, native, torch or numpy"):
        aggregation.weighted_sum_backend()
