"""Fork-server friendliness: after preload(), a forked process runs a stage via cli.main much faster than a cold
process; main() can run repeatedly in one process; MNIST is decoded once and memory-mapped afterwards."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

DIGITS = ["--dataset", "digits", "--model", "mlp"]

FORKED = r"""
import json, os, sys, time
import fedtask_worker
fedtask_worker.preload(["digits"])
from fedtask_worker import cli
argv, output = json.loads(sys.argv[1]), sys.argv[2]
timings = []
for attempt in range(2):
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(cli.main(argv + ["--output", output + f".{attempt}"]))
    _, status = os.waitpid(pid, 0)
    timings.append((time.perf_counter() - started, os.waitstatus_to_exitcode(status)))
print(json.dumps(timings))
"""


@pytest.fixture(scope="module")
def forked_and_cold(tmp_path_factory):
    """The same train stage run by a fresh process (cold) and twice by forks of a preloaded process.

    Returns (folder, [(seconds, exit code) of each fork], seconds of the cold run)."""
    from fedtask_worker import cli

    tmp_path = tmp_path_factory.mktemp("preload")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path / "cache"))
        env = dict(os.environ)
        model = str(tmp_path / "g.safetensors")
        assert cli.main(["init", "--output", model, *DIGITS]) == 0
    train = ["train", "--global", model, *DIGITS, "--device-index", "1", "--device-count", "4",
             "--result-file", str(tmp_path / "result.json")]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedtask_worker", *train, "--output", str(tmp_path / "cold.st")], env=env,
                   check=True, capture_output=True, timeout=300)
    cold = time.perf_counter() - started
    process = subprocess.run([sys.executable, "-c", FORKED, json.dumps(train), str(tmp_path / "warm.st")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    timings = json.loads(process.stdout.strip().splitlines()[-1])
    return tmp_path, timings, cold


def test_a_forked_preloaded_process_runs_a_stage_as_a_fresh_process_does(forked_and_cold):
    tmp_path, timings, _ = forked_and_cold
    assert [code for _, code in timings] == [0, 0]
    assert json.loads((tmp_path / "result.json").read_text())["num_samples"] > 0
    cold_bytes = (tmp_path / "cold.st").read_bytes()
    assert (tmp_path / "warm.st.0").read_bytes() == cold_bytes == (tmp_path / "warm.st.1").read_bytes()


@pytest.mark.timing
def test_a_forked_preloaded_process_starts_a_stage_fast(forked_and_cold):
    _, timings, cold = forked_and_cold
    assert max(seconds for seconds, _ in timings) < cold / 3, (timings, cold)


def test_mnist_is_decoded_once_then_memory_mapped(tmp_path, monkeypatch):
    from fedtask_worker import datasets

    monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(datasets, "_loaded", {})
    first = datasets.load_dataset("mnist")
    assert first.x_train.shape == (50000, 1, 28, 28) and first.x_val.shape == (10000, 1, 28, 28)
    assert first.x_test.shape == (10000, 1, 28, 28) and not first.test_is_validation  # MNIST's own test images
    assert not np.array_equal(first.y_test, first.y_val)
    assert sorted(os.listdir(tmp_path / "mnist-v2")) == ["x_test.npy", "x_train.npy", "x_val.npy", "y_test.npy",
                                                         "y_train.npy", "y_val.npy"]
    assert datasets.load_dataset("mnist") is first  # in-process cache
    monkeypatch.setattr(datasets, "_loaded", {})
    monkeypatch.setattr(datasets, "_decode_mnist", lambda: (_ for _ in ()).throw(AssertionError("decoded twice")))
    again = datasets.load_dataset("mnist")
    assert isinstance(again.x_train, np.memmap)
    np.testing.assert_array_equal(again.y_train[:100], first.y_train[:100])
    assert set(np.unique(first.y_train)) == set(range(10)) and 0 <= float(first.x_train[0].max()) <= 1
