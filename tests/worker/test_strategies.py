"""Every strategy against a numpy reference, in-process and through files; determinism; zero samples."""
import numpy as np
import pytest

from fedtask_worker.combine import aggregate_files, aggregate_states
from fedtask_worker.errors import BadInput
from fedtask_worker.strategies import Options
from tests.support.worker import random_model, write_update

SAMPLES = [3, 1, 4, 1, 5, 9, 2]
SHAPES = {"w": (37, 29), "b": (29,), "count": (3,)}


@pytest.fixture
def states():
    models = []
    for seed in range(len(SAMPLES)):
        model = random_model(seed, {"w": (37, 29), "b": (29,)})
        model["count"] = np.array([seed, 2 * seed, 7], dtype=np.int64)
        models.append(model)
    return models


def stack(states, name):
    return np.stack([state[name] for state in states]).astype(np.float64)


def test_fedavg_is_the_sample_weighted_mean(states):
    out, state = aggregate_states(states, SAMPLES, "fedavg", options=Options(threads=2))
    weights = np.array(SAMPLES) / sum(SAMPLES)
    for name in ("w", "b"):
        np.testing.assert_allclose(out[name], np.tensordot(weights, stack(states, name), 1), rtol=1e-5, atol=1e-6)
        assert out[name].dtype == np.float32
    np.testing.assert_array_equal(out["count"], np.rint(np.tensordot(weights, stack(states, "count"), 1)))
    assert out["count"].dtype == np.int64 and state == {}


def test_small_blocks_and_threads_give_the_same_result(states, monkeypatch):
    import fedtask_worker.aggregation as aggregation

    reference, _ = aggregate_states(states, SAMPLES, "fedavg", options=Options(threads=1))
    monkeypatch.setattr(aggregation, "BLOCK_ELEMENTS", 7)
    blocked, _ = aggregate_states(states, SAMPLES, "fedavg", options=Options(threads=3))
    for name in reference:
        np.testing.assert_allclose(blocked[name], reference[name], rtol=1e-6)


def test_median(states):
    out, _ = aggregate_states(states, SAMPLES, "median")
    np.testing.assert_allclose(out["w"], np.median(stack(states, "w"), axis=0), rtol=1e-6)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.3])
def test_trimmed_mean(states, fraction):
    out, _ = aggregate_states(states, SAMPLES, "trimmed-mean", options=Options(trim_fraction=fraction))
    trim = int(np.floor(fraction * len(states)))
    ordered = np.sort(stack(states, "w"), axis=0)
    np.testing.assert_allclose(out["w"], ordered[trim:len(states) - trim].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_krum_picks_the_update_closest_to_its_neighbours():
    rng = np.random.default_rng(1)
    honest = [{"w": (1 + 0.01 * rng.standard_normal(50)).astype(np.float32)} for _ in range(5)]
    attackers = [{"w": np.full(50, 100.0, dtype=np.float32)} for _ in range(2)]
    updates = attackers + honest
    out, _ = aggregate_states(updates, [1] * 7, "krum", options=Options(byzantine=2))
    flat = np.stack([u["w"] for u in updates]).astype(np.float64)
    distances = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    scores = [np.sort(np.delete(distances[i], i))[:7 - 2 - 2].sum() for i in range(7)]
    np.testing.assert_array_equal(out["w"], updates[int(np.argmin(scores))]["w"])
    assert abs(float(out["w"].mean()) - 1) < 0.1


def test_krum_needs_enough_updates(states):
    with pytest.raises(BadInput, match="at least 5"):
        aggregate_states(states[:4], SAMPLES[:4], "krum", options=Options(byzantine=1))


def test_fedavgm_matches_reference_over_two_rounds(states):
    base = random_model(99, {"w": (37, 29), "b": (29,)})
    base["count"] = np.zeros(3, dtype=np.int64)
    weights = np.array(SAMPLES) / sum(SAMPLES)
    options = Options(server_learning_rate=0.5, server_momentum=0.9)
    out1, state1 = aggregate_states(states, SAMPLES, "fedavgm", base=base, options=options)
    mean = np.tensordot(weights, stack(states, "w"), 1)
    velocity = base["w"] - mean
    np.testing.assert_allclose(out1["w"], base["w"] - 0.5 * velocity, rtol=1e-4, atol=1e-5)
    out2, _ = aggregate_states(states, SAMPLES, "fedavgm", base=out1, state=state1, options=options)
    velocity = 0.9 * velocity + (out1["w"] - mean)
    np.testing.assert_allclose(out2["w"], out1["w"] - 0.5 * velocity, rtol=1e-4, atol=1e-5)


def test_fedadam_matches_reference(states):
    base = {name: value for name, value in random_model(5, {"w": (37, 29), "b": (29,)}).items()}
    base["count"] = np.zeros(3, dtype=np.int64)
    out, state = aggregate_states(states, SAMPLES, "fedadam", base=base, options=Options(server_learning_rate=0.1))
    gradient = base["w"] - np.tensordot(np.array(SAMPLES) / sum(SAMPLES), stack(states, "w"), 1)
    m = 0.1 * gradient
    v = 0.01 * gradient ** 2
    np.testing.assert_allclose(out["w"], base["w"] - 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["m/w"], m, rtol=1e-4, atol=1e-6)


def test_server_optimizers_need_a_base(states):
    with pytest.raises(BadInput, match="--base"):
        aggregate_states(states, SAMPLES, "fedadam")


def test_zero_total_samples_is_an_error_not_nan(states):
    with pytest.raises(BadInput, match="total num_samples .* is 0"):
        aggregate_states(states, [0] * len(states), "fedavg")


def test_files_are_combined_in_uri_order_reproducibly(tmp_path, states):
    paths = {}
    for index, state in enumerate(states):
        paths[f"file://{tmp_path}/u{index}.safetensors"] = write_update(tmp_path / f"u{index}.safetensors", state,
                                                                        SAMPLES[index])
    first = aggregate_files(paths).arrays
    shuffled = dict(reversed(list(paths.items())))
    second = aggregate_files(shuffled).arrays
    in_memory, _ = aggregate_states(states, SAMPLES)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_allclose(first[name], in_memory[name], rtol=1e-6)
