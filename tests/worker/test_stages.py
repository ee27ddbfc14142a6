"""The stages end to end with real torch training: init -> train -> aggregate -> adjust improves accuracy."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fedtask_worker.tensors import load_arrays, read_layout
from tests.support.worker import random_model, run_stage, write_update

DIGITS = ["--dataset", "digits", "--model", "mlp", "--model-args", '{"hidden": [64]}']


@pytest.fixture(autouse=True)
def dataset_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


def test_train_aggregate_adjust_improve_validation_accuracy(tmp_path, capsys):
    store = f"file://{tmp_path}/store"
    code, init, err = run_stage(["init", "--output", f"{store}/round-0000/global.safetensors", *DIGITS, "--seed", 1,
                                 "--result-file", tmp_path / "init.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "init.json").read_text()) == init
    code, baseline, err = run_stage(["adjust", "--no-adjust", "--input", f"{store}/round-0000/global.safetensors",
                                     "--output", tmp_path / "pass.safetensors", *DIGITS], capsys)
    assert code == 0, err
    global_uri = f"{store}/round-0000/global.safetensors"
    accuracies = []
    for round_number in (1, 2):
        prefix = f"{store}/round-{round_number:04d}"
        for device in range(3):
            code, trained, err = run_stage(
                ["train", "--global", global_uri, "--output", f"{prefix}/updates/d{device:03d}.safetensors",
                 *DIGITS, "--round", round_number, "--device-index", device, "--device-count", 3,
                 "--partition", "dirichlet", "--alpha", 1.0, "--shared-fraction", 0.1, "--local-epochs", 2,
                 "--learning-rate", 0.1], capsys)
            assert code == 0, err
            assert trained["num_samples"] > 0 and trained["loss"] > 0 and trained["bytes"] > 0
        code, aggregated, err = run_stage(
            ["aggregate", "--output", f"{prefix}/aggregate.safetensors", "--updates-prefix", f"{prefix}/updates",
             "--base", global_uri, "--round", round_number, "--on-invalid", "skip"], capsys)
        assert code == 0, err
        assert aggregated["updates"] == 3 and aggregated["rejected"] == []
        code, adjusted, err = run_stage(
            ["adjust", "--input", f"{prefix}/aggregate.safetensors", "--output", f"{prefix}/global.safetensors",
             *DIGITS, "--round", round_number, "--shared-fraction", 0.1, "--epochs", 2, "--learning-rate", 0.1],
            capsys)
        assert code == 0, err
        accuracies.append(adjusted["accuracy"])
        global_uri = f"{prefix}/global.safetensors"
    assert baseline["accuracy"] < 0.3
    assert accuracies[-1] > baseline["accuracy"] + 0.3, (baseline, accuracies)
    # digits' 1797 images: the last 20% of a fixed permutation is the test split, 10% of the rest the validation split
    assert (adjusted["test_split"], adjusted["test_samples"], adjusted["validation_samples"]) == ("test", 360, 144)
    assert adjusted["validation_accuracy"] > baseline["validation_accuracy"] + 0.3, (baseline, adjusted)
    _, meta = load_arrays(f"{tmp_path}/store/round-0002/global.safetensors")
    assert meta["stage"] == "adjust" and meta["round"] == "2"
    code, published, err = run_stage(["publish", "--input", global_uri, "--output", tmp_path / "device/model.st"],
                                     capsys)
    assert code == 0, err
    assert published["bytes"] == (tmp_path / "device/model.st").stat().st_size


def test_train_is_deterministic_and_records_num_samples(tmp_path, capsys):
    base = tmp_path / "g.safetensors"
    assert run_stage(["init", "--output", base, *DIGITS], capsys)[0] == 0
    outputs = []
    for name in ("a", "b"):
        code, result, err = run_stage(["train", "--global", base, "--output", tmp_path / f"{name}.safetensors",
                                       *DIGITS, "--device-index", 1, "--device-count", 4, "--optimizer", "adam",
                                       "--learning-rate", 0.01, "--proximal-mu", 0.1, "--momentum", 0.5], capsys)
        assert code == 0, err
        outputs.append(load_arrays(str(tmp_path / f"{name}.safetensors")))
    (first, meta), (second, _) = outputs
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert meta["num_samples"] == str(result["num_samples"])


def test_train_on_a_device_folder_of_npz_files(tmp_path, capsys):
    base = tmp_path / "g.safetensors"
    assert run_stage(["init", "--output", base, *DIGITS], capsys)[0] == 0
    data = tmp_path / "device-data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data / "part1.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 40))
    np.savez(data / "part2.npz", x=rng.random((20, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 20))
    code, result, err = run_stage(["train", "--global", base, "--output", tmp_path / "u.safetensors", *DIGITS,
                                   "--data-source", "dir", "--data-dir", data], capsys)
    assert code == 0, err
    assert result["num_samples"] == 60
    np.savez(data / "part3.npz", x=rng.random((5, 3), dtype=np.float32), y=rng.integers(0, 10, 5))
    code, _, err = run_stage(["train", "--global", base, "--output", tmp_path / "u.safetensors", *DIGITS,
                              "--data-source", "dir", "--data-dir", data], capsys)
    assert code == 2 and "disagree" in err


def test_a_model_that_does_not_fit_is_a_clear_error(tmp_path, capsys):
    wrong = write_update(tmp_path / "wrong.safetensors", random_model(0))
    code, _, err = run_stage(["train", "--global", wrong, "--output", tmp_path / "u.safetensors", *DIGITS], capsys)
    assert code == 2 and "does not fit the model" in err and str(wrong) in err


def test_fedavgm_state_persists_between_rounds_through_the_store(tmp_path, capsys):
    base = write_update(tmp_path / "base.safetensors", random_model(0), 1)
    updates = [write_update(tmp_path / f"u{i}.safetensors", random_model(i + 1), 5) for i in range(2)]
    common = ["--strategy", "fedavgm", "--base", base, "--server-momentum", 0.5, *updates]
    assert run_stage(["aggregate", "--output", tmp_path / "r1.st", "--state-in", tmp_path / "none.st",
                      "--state-out", tmp_path / "s1.st", *common], capsys)[0] == 0
    assert run_stage(["aggregate", "--output", tmp_path / "r2.st", "--state-in", tmp_path / "s1.st",
                      "--state-out", tmp_path / "s2.st", *common], capsys)[0] == 0
    base_w = random_model(0)["layer.weight"]
    mean = (random_model(1)["layer.weight"] + random_model(2)["layer.weight"]) / 2
    state2, _ = load_arrays(str(tmp_path / "s2.st"))
    np.testing.assert_allclose(state2["momentum/layer.weight"], 1.5 * (base_w - mean), rtol=1e-4, atol=1e-5)


def test_aggregate_does_not_import_torch(tmp_path):
    updates = [write_update(tmp_path / f"u{i}.safetensors", random_model(i), 3) for i in range(3)]
    probe = ("import sys; from fedtask_worker import cli; code = cli.main(['aggregate', '--output', "
             f"{str(tmp_path / 'o.st')!r}, '--strategy', 'median', *{updates!r}]); "
             "print('torch' in sys.modules, code)")
    process = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert process.stdout.splitlines()[-1] == "False 0", process.stderr
    assert read_layout(str(tmp_path / "o.st")).metadata["strategy"] == "median"


def test_help_documents_flags_and_exit_codes():
    process = subprocess.run([sys.executable, "-m", "fedtask_worker", "train", "--help"], capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0
    for flag in ("--global", "--proximal-mu", "--classes-per-device", "--result-file", "2 bad input",
                 "3 transient"):
        assert flag in process.stdout


@pytest.mark.parametrize("argv, message", [
    (["train", "--output", "x"], "--global"),
    (["init", "--output", "x", "--model-args", "[1]"], "--model-args"),
    (["init", "--output", "x", "--model", "transformer", "--dataset", "digits"], "--model 'transformer'"),
    (["aggregate", "--output", "x"], "UPDATE_URI"),
    (["aggregate", "--output", "x", "--strategy", "mean", "u"], "--strategy"),
    (["nonsense"], "invalid choice"),
])
def test_bad_flags_give_one_line_and_exit_2(argv, message, capsys):
    code, _, err = run_stage(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
