"""Validate updates and combine them with a strategy: the work of the `aggregate` stage, callable in-process.

`aggregate_states` takes in-memory arrays (what an in-process simulation or a benchmark has); `aggregate_files`
takes safetensors files. Both run the same strategies over the same blocked engine.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from .aggregation import ArraySource, FileSource, NonFiniteValues, UpdateSource, layout_of_arrays
from .errors import BadInput
from .strategies import Job, Options, get_strategy
from .tensors import InvalidUpdate, Layout, compare_layouts, num_samples_of, read_layout


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


def open_updates(paths: dict[str, str], reference: Layout | None, on_invalid: str, max_bytes: int | None,
                 expected_round: int | None) -> tuple[list[UpdateSource], Layout, list[Rejection]]:
    """Check every update's header; return valid sources (sorted by URI), the reference layout and rejections."""
    rejected: list[Rejection] = []
    layouts: dict[str, tuple[Layout, int]] = {}
    for uri in sorted(paths):
        try:
            layout = read_layout(paths[uri], uri, max_bytes)
            samples = num_samples_of(layout, uri)
            update_round = layout.metadata.get("round")
            if expected_round is not None and update_round is not None and update_round != str(expected_round):
                raise InvalidUpdate(f"{uri}: update is from round {update_round}, expected round {expected_round}")
            layouts[uri] = (layout, samples)
        except InvalidUpdate as error:
            _reject(rejected, uri, str(error), on_invalid)
    if reference is None:
        if not layouts:
            raise BadInput(_no_valid_updates(rejected))
        signatures = collections.Counter(layout.signature() for layout, _ in layouts.values())
        most_common = signatures.most_common(1)[0][0]
        reference = next(layout for layout, _ in layouts.values() if layout.signature() == most_common)
    sources: list[UpdateSource] = []
    for uri, (layout, samples) in layouts.items():
        try:
            compare_layouts(layout, reference, uri)
        except InvalidUpdate as error:
            _reject(rejected, uri, str(error), on_invalid)
            continue
        sources.append(FileSource(uri, paths[uri], layout, samples))
    return sources, reference, rejected


def _reject(rejected: list[Rejection], uri: str, message: str, on_invalid: str) -> None:
    if on_invalid == "fail":
        raise InvalidUpdate(message)
    prefix = f"{uri}: "
    rejected.append(Rejection(uri, message[len(prefix):] if message.startswith(prefix) else message))


def _no_valid_updates(rejected: list[Rejection]) -> str:
    return f"no valid updates to aggregate ({len(rejected)} rejected" + (
        f"; first: {rejected[0].uri}: {rejected[0].reason})" if rejected else ")")


def _combine(sources: list[UpdateSource], reference: Layout, strategy, options: Options,
             base: dict[str, np.ndarray] | None, state: dict[str, np.ndarray] | None, on_invalid: str,
             rejected: list[Rejection] | None = None) -> Outcome:
    rejected = rejected if rejected is not None else []
    sources = list(sources)
    while True:
        if not sources:
            raise BadInput(_no_valid_updates(rejected))
        try:
            arrays, new_state = strategy.combine(Job(sources, reference, options, base, state))
            return Outcome(arrays, new_state, [source.name for source in sources], rejected,
                           sum(source.num_samples for source in sources))
        except NonFiniteValues as error:
            if not error.sources:
                raise BadInput(f"aggregate of tensor {error.tensor!r} overflowed to Inf/NaN") from None
            for culprit in error.sources:
                _reject(rejected, culprit.name, f"{culprit.name}: tensor {error.tensor!r} contains NaN or Inf",
                        on_invalid)
                sources.remove(culprit)
                culprit.close()


def aggregate_files(paths: dict[str, str], strategy_name: str = "fedavg", base: tuple[str, str] | None = None,
                    state: dict[str, np.ndarray] | None = None, options: Options | None = None,
                    on_invalid: str = "fail", max_bytes: int | None = None,
                    expected_round: int | None = None) -> Outcome:
    """Combine update files {uri: local path}; `base` is (uri, local path) of the previous global model."""
    from .tensors import load_arrays

    if on_invalid not in ("skip", "fail"):
        raise BadInput(f"--on-invalid {on_invalid!r} must be skip or fail")
    strategy = get_strategy(strategy_name)
    reference = base_arrays = None
    if base is not None:
        reference = read_layout(base[1], base[0])
        if strategy.needs_base:
            base_arrays, _ = load_arrays(base[1], base[0])
    elif strategy.needs_base:
        raise BadInput(f"--strategy {strategy_name} needs --base (the previous global model)")
    sources, reference, rejected = open_updates(paths, reference, on_invalid, max_bytes, expected_round)
    try:
        return _combine(sources, reference, strategy, options or Options(), base_arrays, state, on_invalid, rejected)
    finally:
        for source in sources:
            source.close()
