"""Validate updates and combine them with a strategy: the work of the `aggregate` stage, callable in-process.

`aggregate_states` takes in-memory arrays (what an in-process simulation or a benchmark has); `aggregate_files`
takes safetensors files. Both run the same strategies over the same blocked engine.

With on_invalid="skip", whatever goes wrong with one update (a hostile header, a claim the limits refuse, NaN/Inf,
a read that fails) rejects that update with a reason and the others are combined; only running out of valid updates,
a store that stays down or an exhausted machine (no memory, file descriptors or disk) fails the stage.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .aggregation import (
    FLOAT_KINDS,
    ArraySource,
    ClippedSource,
    FileSource,
    NonFiniteValues,
    SourceFailed,
    UpdateSource,
    default_threads,
    layout_of_arrays,
    squared_distances,
)
from .errors import BadInput, TransientFailure, is_resource_exhaustion
from .strategies import Job, Options, get_strategy
from .tensors import (
    MAX_HEADER_BYTES,
    InvalidUpdate,
    Layout,
    check_integrity,
    compare_layouts,
    num_samples_of,
    read_layout,
)

# An update has the global model's tensors, so its size is the model's plus what its metadata adds.
HEADER_ALLOWANCE = 64 * 1024
# Without a model to derive bounds from (no --base): a header this long already lists ~150k tensors.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024 * 1024
REASON_LIMIT = 300
PARALLEL_DIGEST_BYTES = 16 * 1024 * 1024  # updates checked in parallel from this many bytes in all (~10 ms of sha256)


@dataclasses.dataclass(frozen=True)
class UpdateLimits:
    """What one update may be: its size and its header's (checked before either is read), the round it is from,
    and the num_samples it may claim (more is clipped to the cap)."""

    max_bytes: int | None = None
    max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES
    max_samples: int | None = None  # every update
    sample_caps: Mapping[str, int] = dataclasses.field(default_factory=dict)  # per update name (device)
    expected_round: int | None = None

    def samples_cap(self, uri: str) -> int | None:
        caps = [cap for cap in (self.max_samples, self.sample_caps.get(update_name(uri))) if cap is not None]
        return min(caps) if caps else None


def update_name(uri: str) -> str:
    """The device an update URI belongs to: its file name without `.safetensors` (…/updates/d007.safetensors)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else name


def update_limits(reference: Layout | None, max_update_bytes: int | None = None, **rest) -> UpdateLimits:
    """Limits derived from the global model: its size and its header's, each plus HEADER_ALLOWANCE; at most
    `max_update_bytes`. Without a model: `max_update_bytes` and DEFAULT_MAX_HEADER_BYTES."""
    if reference is None:
        return UpdateLimits(max_update_bytes, DEFAULT_MAX_HEADER_BYTES, **rest)
    max_bytes = reference.file_size + HEADER_ALLOWANCE
    if max_update_bytes is not None:
        max_bytes = min(max_bytes, max_update_bytes)
    return UpdateLimits(max_bytes, min(reference.header_size + HEADER_ALLOWANCE, MAX_HEADER_BYTES), **rest)


@dataclasses.dataclass
class Rejection:
    uri: str
    reason: str


@dataclasses.dataclass
class Outcome:
    arrays: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    accepted: list[str]
    rejected: list[Rejection]
    num_samples: int
    capped: list[str] = dataclasses.field(default_factory=list)  # num_samples clipped to the cap
    clipped: list[str] = dataclasses.field(default_factory=list)  # scaled down to Options.clip_norm


def aggregate_states(states: Sequence[dict[str, np.ndarray]], num_samples: Sequence[int], strategy: str = "fedavg",
                     base: dict[str, np.ndarray] | None = None, state: dict[str, np.ndarray] | None = None,
                     options: Options | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Combine in-memory model states (name -> numpy array, or CPU torch tensors). Returns (model, server state)."""
    if len(states) != len(num_samples):
        raise BadInput(f"{len(states)} states but {len(num_samples)} sample counts")
    if not states:
        raise BadInput("no updates to aggregate")
    sources = [ArraySource(f"update[{index}]", _as_numpy(arrays), int(count))
               for index, (arrays, count) in enumerate(zip(states, num_samples))]
    reference = layout_of_arrays(_as_numpy(base)) if base is not None else sources[0].layout
    for source in sources:
        compare_layouts(source.layout, reference, source.name)
    outcome = _combine(sources, reference, get_strategy(strategy), options or Options(),
                       _as_numpy(base) if base is not None else None, state, on_invalid="fail")
    return outcome.arrays, outcome.state


def _as_numpy(arrays):
    if arrays is None:
        return None
    return {name: (value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value))
            for name, value in arrays.items()}


def open_updates(paths: dict[str, str], reference: Layout | None, on_invalid: str,
                 limits: UpdateLimits | None = None, rejected: list[Rejection] | None = None,
                 capped: list[str] | None = None) -> tuple[list[UpdateSource], Layout, list[Rejection]]:
    """Check every update's header; return valid sources (sorted by URI), the reference layout and rejections.

    `rejected` may already hold updates refused before they got here (not uploaded, too large); `capped` collects
    the updates whose num_samples was clipped to their cap.
    """
    limits = limits or UpdateLimits()
    rejected = rejected if rejected is not None else []
    capped = capped if capped is not None else []
    layouts: dict[str, tuple[Layout, int]] = {}
    for uri in sorted(paths):
        try:
            layout = read_layout(paths[uri], uri, limits.max_bytes, limits.max_header_bytes)
            samples = num_samples_of(layout, uri)
            update_round = layout.metadata.get("round")
            expected_round = limits.expected_round
            if expected_round is not None and update_round is not None and update_round != str(expected_round):
                raise InvalidUpdate(f"{uri}: update is from round {update_round[:20]}, expected round {expected_round}")
            if reference is not None:
                compare_layouts(layout, reference, uri)
            cap = limits.samples_cap(uri)
            if cap is not None and samples > cap:
                samples = cap
                capped.append(uri)
            layouts[uri] = (layout, samples)
        except Exception as error:  # anything one file does rejects that file (see reject_error)
            reject_error(rejected, uri, error, on_invalid)
    _check_digests(paths, layouts, rejected, on_invalid)
    if reference is None:
        if not layouts:
            raise BadInput(_no_valid_updates(rejected))
        signatures = collections.Counter(layout.signature() for layout, _ in layouts.values())
        most_common = signatures.most_common(1)[0][0]
        reference = next(layout for layout, _ in layouts.values() if layout.signature() == most_common)
    sources: list[UpdateSource] = []
    try:
        for uri, (layout, samples) in layouts.items():
            try:
                compare_layouts(layout, reference, uri)
                sources.append(FileSource(uri, paths[uri], layout, samples))
            except Exception as error:
                reject_error(rejected, uri, error, on_invalid)
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources, reference, rejected


def _check_digests(paths: dict[str, str], layouts: dict[str, tuple[Layout, int]], rejected: list[Rejection],
                   on_invalid: str) -> None:
    """Read each update that passed its header checks once through its digest (in parallel: hashlib lets go of the
    GIL); an update whose bytes differ from what its writer recorded is rejected before any tensor of it is used."""
    checked = [uri for uri in layouts if layouts[uri][0].integrity is not None]
    if not checked:
        return

    def check(uri: str) -> BaseException | None:
        try:
            check_integrity(paths[uri], layouts[uri][0], uri)
            return None
        except Exception as error:  # judged below, in URI order
            return error

    threads = min(len(checked), default_threads())
    if threads == 1 or sum(layouts[uri][0].file_size for uri in checked) < PARALLEL_DIGEST_BYTES:
        failures = {uri: check(uri) for uri in checked}  # starting threads would cost more than they save
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            failures = dict(zip(checked, pool.map(check, checked)))
    for uri in checked:
        if failures[uri] is not None:
            del layouts[uri]
            reject_error(rejected, uri, failures[uri], on_invalid)


def reject_error(rejected: list[Rejection], uri: str, error: BaseException, on_invalid: str) -> None:
    """Record why one update cannot be used, whatever it raised; re-raise what is not the update's fault (the
    store staying down, the machine out of memory, descriptors or disk) and, with on_invalid=fail, the reason."""
    if is_resource_exhaustion(error) or isinstance(error, TransientFailure):
        raise error
    if isinstance(error, BadInput):
        message = str(error)
    else:  # a check this code does not know of failed: still this update's problem, not the round's
        message = f"{uri}: cannot be read ({type(error).__name__}: {str(error)[:200]})"
    _reject(rejected, uri, message, on_invalid)


def _reject(rejected: list[Rejection], uri: str, message: str, on_invalid: str) -> None:
    message = " ".join(message.split())
    if on_invalid == "fail":
        raise InvalidUpdate(message)
    prefix = f"{uri}: "
    reason = message[len(prefix):] if message.startswith(prefix) else message
    rejected.append(Rejection(uri, reason if len(reason) <= REASON_LIMIT else reason[:REASON_LIMIT - 3] + "..."))


def _no_valid_updates(rejected: list[Rejection]) -> str:
    return f"no valid updates to aggregate ({len(rejected)} rejected" + (
        f"; first: {rejected[0].uri}: {rejected[0].reason})" if rejected else ")")


def _combine(sources: list[UpdateSource], reference: Layout, strategy, options: Options,
             base: dict[str, np.ndarray] | None, state: dict[str, np.ndarray] | None, on_invalid: str,
             rejected: list[Rejection] | None = None, capped: list[str] | None = None) -> Outcome:
    """Combine; an update found bad on the way (NaN/Inf, a failed read) is rejected and the rest combined again."""
    rejected = rejected if rejected is not None else []
    sources = list(sources)
    try:
        while True:
            if not sources:
                raise BadInput(_no_valid_updates(rejected))
            try:
                clipped = _clip(sources, reference, base, options)
                combined = [clipped.get(id(source), source) for source in sources]
                arrays, new_state = strategy.combine(Job(combined, reference, options, base, state))
                return Outcome(arrays, new_state, [source.name for source in sources], rejected,
                               sum(source.num_samples for source in sources), list(capped or []),
                               sorted(source.name for source in sources if id(source) in clipped))
            except NonFiniteValues as error:
                if not error.sources:
                    raise BadInput(f"aggregate of tensor {error.tensor!r} overflowed to Inf/NaN") from None
                what = ("holds values so large that the aggregate overflows" if error.overflow
                        else "contains NaN or Inf")
                culprits = [_unwrapped(culprit, sources) for culprit in error.sources]
                for culprit in culprits:
                    _reject(rejected, culprit.name, f"{culprit.name}: tensor {error.tensor!r} {what}", on_invalid)
                _drop(sources, culprits)
            except SourceFailed as error:
                culprit = _unwrapped(error.source, sources)
                _reject(rejected, culprit.name, f"{culprit.name}: {error.reason}", on_invalid)
                _drop(sources, [culprit])
    finally:
        for source in sources:
            source.close()


def _unwrapped(source: UpdateSource, sources: list[UpdateSource]) -> UpdateSource:
    """The entry of `sources` a (possibly clipped) source stands for."""
    inner = getattr(source, "inner", source)
    return next(candidate for candidate in sources if candidate is inner)


def _drop(sources: list[UpdateSource], culprits: list[UpdateSource]) -> None:
    for culprit in culprits:
        if culprit in sources:
            sources.remove(culprit)
            culprit.close()


def _clip(sources: list[UpdateSource], reference: Layout, base: dict[str, np.ndarray] | None,
          options: Options) -> dict[int, UpdateSource]:
    """{id(source): clipped source} for the updates farther than options.clip_norm (L2, float tensors) from the
    global model: they become base + (update - base) * clip_norm / distance. One extra read pass; NaN/Inf found
    on the way raise NonFiniteValues."""
    if options.clip_norm is None:
        return {}
    if base is None:
        raise BadInput("--clip-norm needs --base (the global model the distance is measured from)")
    if not options.clip_norm > 0 or not math.isfinite(options.clip_norm):
        raise BadInput(f"--clip-norm {options.clip_norm} must be a positive number")
    distances = np.sqrt(squared_distances(sources, reference, base, options.threads))
    flat_base = {name: np.ascontiguousarray(base[name]).reshape(-1) for name, info in reference.tensors.items()
                 if info.numpy_dtype.kind in FLOAT_KINDS}
    return {id(source): ClippedSource(source, flat_base, options.clip_norm / float(distance))
            for source, distance in zip(sources, distances) if distance > options.clip_norm}


def aggregate_files(paths: dict[str, str], strategy_name: str = "fedavg", base: tuple[str, str] | None = None,
                    state: dict[str, np.ndarray] | None = None, options: Options | None = None,
                    on_invalid: str = "fail", limits: UpdateLimits | None = None,
                    rejected: list[Rejection] | None = None) -> Outcome:
    """Combine update files {uri: local path}; `base` is (uri, local path) of the previous global model;
    `rejected`: updates already refused (e.g. never uploaded)."""
    from .tensors import load_arrays

    if on_invalid not in ("skip", "fail"):
        raise BadInput(f"--on-invalid {on_invalid!r} must be skip or fail")
    strategy = get_strategy(strategy_name)
    options = options or Options()
    reference = base_arrays = None
    if base is not None:
        reference = read_layout(base[1], base[0])
        if strategy.needs_base or options.clip_norm is not None:
            base_arrays, _ = load_arrays(base[1], base[0])  # checks its digest
        else:
            check_integrity(base[1], reference, base[0])
    elif strategy.needs_base:
        raise BadInput(f"--strategy {strategy_name} needs --base (the previous global model)")
    elif options.clip_norm is not None:
        raise BadInput("--clip-norm needs --base (the global model the distance is measured from)")
    capped: list[str] = []
    sources, reference, rejected = open_updates(paths, reference, on_invalid, limits, list(rejected or []), capped)
    return _combine(sources, reference, strategy, options, base_arrays, state, on_invalid, rejected, capped)
