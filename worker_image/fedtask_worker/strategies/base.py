"""The interface every aggregation strategy implements (one class per file in this package)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..aggregation import UpdateSource
from ..tensors import Layout


@dataclasses.dataclass
class Options:
    server_learning_rate: float | None = None
    server_momentum: float | None = None
    trim_fraction: float = 0.1
    byzantine: int = 0
    threads: int | None = None
    clip_norm: float | None = None  # updates farther (L2) from the global model are scaled down to this distance


@dataclasses.dataclass
class Job:
    sources: Sequence[UpdateSource]  # sorted by name; all valid against `reference`
    reference: Layout
    options: Options
    base: dict[str, np.ndarray] | None = None  # the previous global model (required by server optimizers)
    state: dict[str, np.ndarray] | None = None  # server state from the previous round (empty on round 1)

    def sample_weights(self) -> dict[int, float]:
        from ..errors import BadInput

        total = sum(source.num_samples for source in self.sources)
        if total <= 0:
            raise BadInput(f"total num_samples of the {len(self.sources)} updates is 0: nothing to weight by "
                           f"(a weighted mean would be NaN)")
        return {index: source.num_samples / total for index, source in enumerate(self.sources)}


class Strategy:
    name: str = ""
    needs_base: bool = False
    has_state: bool = False

    def combine(self, job: Job) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return (new model arrays, new server state arrays; empty when stateless)."""
        raise NotImplementedError
