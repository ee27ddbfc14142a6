"""Blocked, multi-threaded reduction over updates: the engine behind every aggregation strategy.

Updates are never loaded whole. The parameter space is cut into blocks small enough to stay in the CPU cache; for
each block a thread reads that slice of every update (pread from the file, or a view of an in-memory array) and
reduces it into the output, so memory stays at one output model plus a few blocks per thread whatever the number of
updates, and each input byte is read from memory once. Weighted sums run on a small compiled kernel
(_reduce.c) that folds every update into an L1-sized chunk of the output before moving on; without it, on torch or
numpy, one update at a time. The kernel, numpy ufuncs and os.preadv release the GIL, so blocks run in parallel.
NaN/Inf are caught per block (a non-finite output block points at the culprits; an output that overflows with finite
inputs points at the update holding the largest values). A failure that belongs to one update (NonFiniteValues,
SourceFailed) names it, so the caller can leave that update out and run again.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from .errors import BadInput
from .tensors import SAFETENSORS_NAMES, Layout, TensorInfo

# numpy needs two passes per update (multiply, add) over an in-cache block; torch's fused add_(alpha=) needs one and
# streams well with larger blocks (measured on a 2-core EPYC: numpy 256K elements, torch 1M). The compiled kernel
# keeps its own L1-sized chunks, so its block only sets the threads' share of work (256K measured best on a 2-core
# Xeon: 1.31x the read-bandwidth floor at N=10 vs 1.55x with 1M blocks, both with a freshly allocated output).
BLOCK_ELEMENTS = int(os.environ.get("FEDTASK_AGGREGATE_BLOCK", 256 * 1024))
TORCH_BLOCK_ELEMENTS = int(os.environ.get("FEDTASK_AGGREGATE_BLOCK", 1024 * 1024))
BACKENDS = ("native", "torch", "numpy")
FLOAT_KINDS = "f"
# The compiled kernel reduces sources that read into scratch buffers (files) this many at a time, each into its own
# buffer; in-memory sources hand out views and go all in one call.
COPYING_SOURCES_PER_CALL = 8


def native_kernel():
    """The compiled weighted-sum kernel (fedtask_worker/_reduce.c), or None where it was not built."""
    try:
        from . import _reduce
    except ImportError:
        return None
    return _reduce


def weighted_sum_backend() -> str:
    """The kernel weighted sums (fedavg, fedavgm, fedadam) run on: native, torch or numpy.

    FEDTASK_AGGREGATE_BACKEND=auto (default) takes the compiled kernel when the install built it, else torch if this
    process has already imported it (an in-process simulation, a preloaded worker), else numpy: the aggregate stage
    never imports torch just to average. native, torch or numpy choose one outright.
    """
    choice = os.environ.get("FEDTASK_AGGREGATE_BACKEND", "auto")
    if choice not in ("auto",) + BACKENDS:
        raise BadInput(f"FEDTASK_AGGREGATE_BACKEND={choice!r}: expected auto, native, torch or numpy")
    built = native_kernel() is not None
    if choice == "native" and not built:
        raise BadInput("FEDTASK_AGGREGATE_BACKEND=native, but the compiled kernel fedtask_worker._reduce was not "
                       "built (reinstall fedtask where a C compiler is available)")
    if choice == "auto":
        choice = "native" if built else "torch" if "torch" in sys.modules else "numpy"
    if choice == "torch":
        import torch  # noqa: F401  (chosen outright: the kernel takes it from sys.modules)

        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    return choice


def default_threads() -> int:
    raw = os.environ.get("FEDTASK_AGGREGATE_THREADS")
    if raw:
        return max(1, int(raw))
    return max(1, min(len(os.sched_getaffinity(0)), 8))


class UpdateSource:
    """One update's tensors, readable block by block."""

    name: str
    layout: Layout
    num_samples: int
    reads_into_scratch = True  # False where read() returns a view, so any number of blocks can be held at once

    def read(self, tensor: str, start: int, stop: int, scratch: np.ndarray) -> np.ndarray:
        """Elements [start, stop) of the flattened tensor; may fill and return `scratch[:stop-start]` or a view."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileSource(UpdateSource):
    def __init__(self, name: str, path: str, layout: Layout, num_samples: int):
        self.name, self.layout, self.num_samples = name, layout, num_samples
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, tensor: str, start: int, stop: int, scratch: np.ndarray) -> np.ndarray:
        info = self.layout.tensors[tensor]
        itemsize = info.numpy_dtype.itemsize
        out = scratch[: stop - start]
        view = memoryview(out).cast("B")
        offset = info.begin + start * itemsize
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self._fd, [view[done:]], offset + done)
            except OSError as error:
                raise SourceFailed(self, f"cannot be read: {error.strerror}") from None
            if got <= 0:
                raise SourceFailed(self, "file shrank while being read")
            done += got
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ClippedSource(UpdateSource):
    """An update scaled towards the global model: base + (update - base) * scale on float tensors."""

    def __init__(self, inner: UpdateSource, base: dict[str, np.ndarray], scale: float):
        self.inner, self.base, self.scale = inner, base, scale  # base: flat float tensors of the global model
        self.name, self.layout, self.num_samples = inner.name, inner.layout, inner.num_samples

    def read(self, tensor: str, start: int, stop: int, scratch: np.ndarray) -> np.ndarray:
        values = self.inner.read(tensor, start, stop, scratch)
        anchor = self.base.get(tensor)
        if anchor is None:
            return values
        anchor = anchor[start:stop]
        out = scratch[: stop - start]
        np.subtract(values, anchor, out=out)
        out *= out.dtype.type(self.scale)
        out += anchor
        return out

    def close(self) -> None:
        self.inner.close()


class ArraySource(UpdateSource):
    reads_into_scratch = False

    def __init__(self, name: str, arrays: dict[str, np.ndarray], num_samples: int):
        self.name, self.num_samples = name, num_samples
        self.flat = {key: np.ascontiguousarray(value).reshape(-1) for key, value in arrays.items()}
        self.layout = layout_of_arrays(arrays)

    def read(self, tensor: str, start: int, stop: int, scratch: np.ndarray) -> np.ndarray:
        return self.flat[tensor][start:stop]


def layout_of_arrays(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Layout:
    tensors = {}
    offset = 0
    for key, value in arrays.items():
        dtype = SAFETENSORS_NAMES.get(np.dtype(value.dtype))
        if dtype is None:
            raise BadInput(f"tensor {key!r}: unsupported dtype {value.dtype}")
        tensors[key] = TensorInfo(dtype, tuple(value.shape), offset, offset + value.nbytes)
        offset += value.nbytes
    return Layout(tensors, dict(metadata or {}), offset)


class NonFiniteValues(Exception):
    """NaN/Inf in `tensor`: `sources` hold them; with `overflow`, the source with the largest values made a finite
    sum overflow. Empty `sources`: the combination itself overflowed."""

    def __init__(self, sources: list[UpdateSource], tensor: str, overflow: bool = False):
        super().__init__(tensor)
        self.sources, self.tensor, self.overflow = sources, tensor, overflow


class SourceFailed(Exception):
    """One update could not be read while it was being combined (a file that shrank or failed)."""

    def __init__(self, source: UpdateSource, reason: str):
        super().__init__(f"{source.name}: {reason}")
        self.source, self.reason = source, reason


def non_finite_rows(stack: np.ndarray) -> list[int]:
    """Rows of a (sources x block) stack holding NaN or Inf (row sums first: exact check only where they fail)."""
    with np.errstate(over="ignore", invalid="ignore"):
        sums = stack.sum(axis=1, dtype=np.float64)
    return [int(row) for row in np.flatnonzero(~np.isfinite(sums)) if not np.isfinite(stack[row]).all()]


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "f":
        return np.dtype(np.float64) if dtype.itemsize > 4 else np.dtype(np.float32)
    return np.dtype(np.float64)


@dataclasses.dataclass
class BlockContext:
    """What a block kernel gets: the tensor, the element range, per-thread scratch buffers."""

    tensor: str
    info: TensorInfo
    start: int
    stop: int
    scratch: dict[str, np.ndarray]

    def buffer(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        size = int(np.prod(shape))
        current = self.scratch.get(key)
        if current is None or current.dtype != dtype or current.size < size:
            current = np.empty(max(size, 1), dtype=dtype)
            self.scratch[key] = current
        return current[:size].reshape(shape)


# A kernel may return True when it has checked that its output block is finite, so the engine need not check again.
BlockKernel = Callable[[BlockContext, Sequence[UpdateSource], np.ndarray], "bool | None"]


def reduce_blocks(sources: Sequence[UpdateSource], reference: Layout, kernel: BlockKernel,
                  threads: int | None = None, check_finite: bool = True,
                  block_elements: int | None = None) -> dict[str, np.ndarray]:
    """Run `kernel(context, sources, out_block)` over every block of every tensor; return the output arrays."""
    block = block_elements or BLOCK_ELEMENTS
    outputs = {name: np.empty(info.shape, dtype=info.numpy_dtype) for name, info in reference.tensors.items()}
    work = []
    for name, info in reference.tensors.items():
        for start in range(0, info.count, block):
            work.append((name, start, min(start + block, info.count)))
    local = threading.local()

    def run(item: tuple[str, int, int]) -> None:
        name, start, stop = item
        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = {}
        info = reference.tensors[name]
        out_block = outputs[name].reshape(-1)[start:stop]
        context = BlockContext(name, info, start, stop, scratch)
        known_finite = kernel(context, sources, out_block)
        if check_finite and info.dtype in ("F32", "F64", "F16") and not (known_finite or _all_finite(out_block)):
            check = context.buffer("check", (stop - start,), info.numpy_dtype)
            culprits = [source for source in sources if not _all_finite(source.read(name, start, stop, check))]
            if culprits or len(sources) < 2:
                raise NonFiniteValues(culprits, name)
            largest = [float(np.max(np.abs(source.read(name, start, stop, check)))) for source in sources]
            raise NonFiniteValues([sources[int(np.argmax(largest))]], name, overflow=True)

    threads = threads or default_threads()
    if threads <= 1 or len(work) <= 1:
        for item in work:
            run(item)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="fedtask-reduce") as pool:
            # Interleave so the threads walk memory in step; list() re-raises the first failure.
            list(pool.map(run, work))
    return outputs


def squared_distances(sources: Sequence[UpdateSource], reference: Layout, base: dict[str, np.ndarray],
                      threads: int | None = None) -> np.ndarray:
    """Per source, the squared L2 distance of its float tensors from `base` (float64 totals; one read pass, memory
    a few blocks per thread). NaN/Inf in a source raise NonFiniteValues naming it."""
    totals = np.zeros(len(sources))
    lock = threading.Lock()

    def kernel(context: BlockContext, members: Sequence[UpdateSource], out_block: np.ndarray) -> None:
        dtype = context.info.numpy_dtype
        if dtype.kind not in FLOAT_KINDS:
            return
        size = context.stop - context.start
        anchor = base[context.tensor].reshape(-1)[context.start:context.stop]
        read_buffer = context.buffer("read", (size,), dtype)
        diff = context.buffer("diff", (size,), accumulator_dtype(dtype))
        partial = np.zeros(len(members))
        culprits = []
        for index, source in enumerate(members):
            values = source.read(context.tensor, context.start, context.stop, read_buffer)
            np.subtract(values, anchor, out=diff)
            total = float(np.dot(diff, diff))
            if not math.isfinite(total):  # NaN/Inf, or squares beyond float32: tell them apart in float64
                if not np.isfinite(values).all():
                    culprits.append(source)
                    continue
                wide = values.astype(np.float64) - anchor
                total = float(np.dot(wide, wide))
            partial[index] = total
        if culprits:
            raise NonFiniteValues(culprits, context.tensor)
        with lock:
            totals[:] += partial

    reduce_blocks(sources, reference, kernel, threads, check_finite=False)
    return totals


def farthest_source(sources: Sequence[UpdateSource], tensor: str, info: TensorInfo,
                    base: np.ndarray) -> UpdateSource:
    """The source whose `tensor` lies farthest (largest |update - base| element) from `base`, read block by block."""
    flat = base.reshape(-1)
    scratch = np.empty(min(info.count, BLOCK_ELEMENTS), dtype=info.numpy_dtype)
    largest = []
    with np.errstate(over="ignore", invalid="ignore"):
        for source in sources:
            far = 0.0
            for start in range(0, info.count, BLOCK_ELEMENTS):
                stop = min(start + BLOCK_ELEMENTS, info.count)
                values = source.read(tensor, start, stop, scratch)
                far = max(far, float(np.max(np.abs(values.astype(np.float64) - flat[start:stop]), initial=0.0)))
            largest.append(far)
    return sources[int(np.argmax(largest))]


def _all_finite(values: np.ndarray) -> bool:
    if values.size == 0:
        return True
    # A sum is NaN/Inf if any term is; only a (rare) overflowing sum needs the exact, slower element check.
    return math.isfinite(float(np.sum(values))) or bool(np.isfinite(values).all())


def weighted_sum_kernel(weights: dict[int, float], backend: str) -> BlockKernel:
    """out = sum_i weights[i] * update_i, block by block on the given backend (see weighted_sum_backend)."""
    numpy_kernel = _numpy_weighted_sum(weights, sys.modules["torch"] if backend == "torch" else None)
    if backend != "native":
        return numpy_kernel
    native = native_kernel()
    native_dtypes = (np.dtype(np.float32), np.dtype(np.float64))
    no_scratch = np.empty(0, dtype=np.float32)  # what a view-returning source is handed (and ignores)

    def kernel(context: BlockContext, sources: Sequence[UpdateSource], out_block: np.ndarray) -> bool | None:
        dtype = context.info.numpy_dtype
        if dtype not in native_dtypes or not sources:
            return numpy_kernel(context, sources, out_block)
        per_call = COPYING_SOURCES_PER_CALL if any(source.reads_into_scratch for source in sources) else len(sources)
        shape = (context.stop - context.start,)
        finite = True
        for first in range(0, len(sources), per_call):
            members = range(first, min(first + per_call, len(sources)))
            values = [sources[index].read(context.tensor, context.start, context.stop,
                                          context.buffer(f"read{index - first}", shape, dtype)
                                          if sources[index].reads_into_scratch else no_scratch) for index in members]
            # Each call checks the output as it leaves it, so the last call's answer covers the whole sum.
            finite = native.weighted_sum(out_block, values, [weights[index] for index in members], first > 0)
        return finite

    return kernel


def _numpy_weighted_sum(weights: dict[int, float], torch=None) -> BlockKernel:
    """One update at a time into a cache-sized accumulator (torch: one fused pass per update; numpy: two)."""

    def kernel(context: BlockContext, sources: Sequence[UpdateSource], out_block: np.ndarray) -> None:
        size = context.stop - context.start
        dtype = context.info.numpy_dtype
        acc_dtype = accumulator_dtype(dtype)
        direct = acc_dtype == dtype
        acc = out_block if direct else context.buffer("acc", (size,), acc_dtype)
        read_buffer = context.buffer("read", (size,), dtype)
        if not sources:
            acc.fill(0)
        elif torch is not None and direct:
            total = torch.from_numpy(acc)
            for index, source in enumerate(sources):
                values = torch.from_numpy(source.read(context.tensor, context.start, context.stop, read_buffer))
                if index == 0:
                    torch.mul(values, weights[index], out=total)
                else:
                    total.add_(values, alpha=weights[index])
        else:
            product = context.buffer("product", (size,), acc_dtype)
            for index, source in enumerate(sources):
                values = source.read(context.tensor, context.start, context.stop, read_buffer)
                weight = acc_dtype.type(weights[index])
                if index == 0:
                    np.multiply(values, weight, out=acc, casting="unsafe")
                else:
                    np.multiply(values, weight, out=product, casting="unsafe")
                    np.add(acc, product, out=acc)
        if not direct:
            if dtype.kind in "iub":
                np.rint(acc, out=acc)
            out_block[...] = acc.astype(dtype, copy=False)

    return kernel


def stacked_kernel(reduce: Callable[[np.ndarray, np.ndarray], None]) -> BlockKernel:
    """Stack the block of every update (N x block, accumulator dtype) and call reduce(stack, out_acc)."""

    def kernel(context: BlockContext, sources: Sequence[UpdateSource], out_block: np.ndarray) -> None:
        size = context.stop - context.start
        dtype = context.info.numpy_dtype
        acc_dtype = accumulator_dtype(dtype)
        stack = context.buffer("stack", (len(sources), size), acc_dtype)
        read_buffer = context.buffer("read", (size,), dtype)
        for index, source in enumerate(sources):
            stack[index] = source.read(context.tensor, context.start, context.stop, read_buffer)
        if dtype.kind == "f":
            culprits = non_finite_rows(stack)
            if culprits:  # a robust statistic would hide them in this block, not in the others
                raise NonFiniteValues([sources[row] for row in culprits], context.tensor)
        result = context.buffer("result", (size,), acc_dtype)
        reduce(stack, result)
        if dtype.kind in "iub":
            np.rint(result, out=result)
        out_block[...] = result.astype(dtype, copy=False)

    return kernel
