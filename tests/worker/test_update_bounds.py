"""Issue 12 (4): what one update may weigh. num_samples caps (--max-samples, --sample-caps), the norm bound
(--clip-norm) and finite server-optimizer output, each through the real aggregate stage on real files."""
import numpy as np
import pytest

from fedtask_worker.combine import aggregate_states
from fedtask_worker.tensors import load_arrays
from tests.support.worker import random_model, run_stage, write_update


@pytest.fixture
def files(tmp_path):
    base = write_update(tmp_path / "global.safetensors", random_model(100), 0)
    updates = [write_update(tmp_path / f"d00{i}.safetensors", random_model(i), samples)
               for i, samples in enumerate([10, 20, 10 ** 15])]
    return base, updates


def aggregate(tmp_path, capsys, base, updates, *flags, strategy="fedavg"):
    output = tmp_path / "out.safetensors"
    code, result, err = run_stage(["aggregate", "--output", output, "--base", base, "--on-invalid", "skip",
                                   "--strategy", strategy, *flags, *updates], capsys)
    arrays = load_arrays(str(output))[0] if code == 0 else None
    return code, result, err, arrays


def models(paths):
    return [load_arrays(path)[0] for path in paths]


def test_a_claim_over_max_samples_is_clipped_to_it(tmp_path, capsys, files):
    base, updates = files
    code, result, err, out = aggregate(tmp_path, capsys, base, updates, "--max-samples", 30)
    assert code == 0, err
    assert result["samples_capped"] == 1 and result["num_samples"] == 10 + 20 + 30 and result["rejected"] == []
    expected, _ = aggregate_states(models(updates), [10, 20, 30])
    for name in expected:
        np.testing.assert_array_equal(out[name], expected[name])


def test_without_a_cap_one_device_claiming_1e15_samples_is_the_global_model(tmp_path, capsys, files):
    base, updates = files
    code, _, err, out = aggregate(tmp_path, capsys, base, updates)
    assert code == 0, err
    np.testing.assert_allclose(out["layer.weight"], models(updates)[2]["layer.weight"], rtol=1e-6)


def test_per_update_caps_by_device(tmp_path, capsys, files):
    base, updates = files
    code, result, err, out = aggregate(tmp_path, capsys, base, updates, "--sample-caps", "d000=5,d002=25",
                                       "--sample-caps", "d001=40", "--max-samples", 1000)
    assert code == 0, err
    assert result["samples_capped"] == 2 and result["num_samples"] == 5 + 20 + 25
    expected, _ = aggregate_states(models(updates), [5, 20, 25])
    for name in expected:
        np.testing.assert_array_equal(out[name], expected[name])


@pytest.mark.parametrize("flags", [["--max-samples", "0"], ["--max-samples", "²"], ["--sample-caps", "d000"],
                                   ["--sample-caps", "d000=-1"], ["--clip-norm", "nan"], ["--clip-norm", "0"]])
def test_bad_bounds_are_flag_errors(tmp_path, capsys, files, flags):
    base, updates = files
    code, _, err, _ = aggregate(tmp_path, capsys, base, updates, *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def clipped_reference(base, updates, bound):
    out = []
    for update in updates:
        distance = np.sqrt(sum(np.sum((update[k].astype(np.float64) - base[k]) ** 2) for k in base))
        scale = min(1.0, bound / distance)
        out.append({k: (base[k] + (update[k].astype(np.float64) - base[k]) * scale).astype(np.float32)
                    for k in base})
    return out


@pytest.mark.parametrize("strategy", ["fedavg", "median", "fedavgm"])
def test_clip_norm_scales_far_updates_towards_the_global_model(tmp_path, capsys, strategy):
    base_model = random_model(100)
    base = write_update(tmp_path / "global.safetensors", base_model, 0)
    raw = [random_model(i) for i in range(3)]
    raw[2] = {k: v * 1000 for k, v in raw[2].items()}  # a boosted (model-replacement) update
    updates = [write_update(tmp_path / f"d00{i}.safetensors", model, 10 + i) for i, model in enumerate(raw)]
    distances = [np.sqrt(sum(np.sum((m[k].astype(np.float64) - base_model[k]) ** 2) for k in m)) for m in raw]
    bound = float(np.median(distances))
    code, result, err, out = aggregate(tmp_path, capsys, base, updates, "--clip-norm", repr(bound),
                                       strategy=strategy)
    assert code == 0, err
    assert result["norm_clipped"] == sum(d > bound for d in distances) == 1
    expected, _ = aggregate_states(clipped_reference(base_model, raw, bound), [10, 11, 12], strategy,
                                   base=base_model)
    for name in expected:
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-5)
    distance_out = np.sqrt(sum(np.sum((out[k].astype(np.float64) - base_model[k]) ** 2) for k in out))
    if strategy != "fedavgm":
        assert distance_out <= bound * (1 + 1e-5)


def test_clip_norm_rejects_a_nan_update_and_goes_on(tmp_path, capsys, files):
    base, updates = files
    model = random_model(5)
    model["layer.bias"][1] = np.nan
    bad = write_update(tmp_path / "d009.safetensors", model, 3)
    code, result, err, _ = aggregate(tmp_path, capsys, base, updates + [bad], "--clip-norm", "1.0")
    assert code == 0, err
    assert [item["uri"] for item in result["rejected"]] == [bad] and "NaN" in result["rejected"][0]["reason"]


def test_clip_norm_needs_a_base(tmp_path, capsys, files):
    _, updates = files
    code, _, err = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", "--clip-norm", "1", *updates],
                             capsys)
    assert code == 2 and "--clip-norm needs --base" in err


@pytest.mark.parametrize("strategy,learning_rate", [("fedavgm", "1e300"), ("fedadam", "1e300")])
def test_a_non_finite_server_step_fails_the_stage_without_writing_a_model(tmp_path, capsys, strategy,
                                                                          learning_rate):
    base = write_update(tmp_path / "global.safetensors", random_model(100), 0)
    updates = [write_update(tmp_path / f"d00{i}.safetensors", random_model(i), 10) for i in range(3)]
    output = tmp_path / "out.safetensors"
    code, result, err = run_stage(["aggregate", "--output", output, "--base", base, "--strategy", strategy,
                                   "--server-learning-rate", learning_rate, "--state-out",
                                   tmp_path / "state.safetensors", *updates], capsys)
    assert code == 2 and result is None
    assert len(err.strip().splitlines()) == 1 and "NaN or Inf" in err and "serverLearningRate" in err
    assert not output.exists() and not (tmp_path / "state.safetensors").exists()


def test_one_update_that_overflows_the_server_state_is_rejected(tmp_path, capsys):
    """fedadam's second moment overflows float32 (its output stays finite) when one update sits 1e20 away: that
    update is rejected, the others are combined; with that update alone, the stage fails and writes no state."""
    base = write_update(tmp_path / "global.safetensors", random_model(100), 0)
    good = [write_update(tmp_path / f"d00{i}.safetensors", random_model(i), 10) for i in range(3)]
    far = write_update(tmp_path / "d009.safetensors", {k: v + 1e20 for k, v in random_model(9).items()}, 10)
    state = tmp_path / "s.safetensors"
    common = ["aggregate", "--base", base, "--strategy", "fedadam", "--on-invalid", "skip", "--state-out", state]
    code, result, err = run_stage(common + ["--output", tmp_path / "with.safetensors", *good, far], capsys)
    assert code == 0, err
    assert [item["uri"] for item in result["rejected"]] == [far] and "so large" in result["rejected"][0]["reason"]
    with_state = state.read_bytes()
    code, _, err = run_stage(common + ["--output", tmp_path / "without.safetensors", *good], capsys)
    assert code == 0, err
    assert state.read_bytes() == with_state
    assert (tmp_path / "with.safetensors").read_bytes() == (tmp_path / "without.safetensors").read_bytes()
    state.unlink()
    code, _, err = run_stage(common + ["--output", tmp_path / "alone.safetensors", far], capsys)
    assert code == 2 and "'v/layer" in err and "NaN or Inf" in err and not state.exists()
