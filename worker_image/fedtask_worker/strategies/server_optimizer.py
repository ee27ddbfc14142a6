"""Shared part of FedAvgM and FedAdam: a server optimizer stepping along the pseudo-gradient base - mean."""
from __future__ import annotations

import numpy as np

from ..aggregation import NonFiniteValues, farthest_source
from ..errors import BadInput
from .base import Job, Strategy
from .fedavg import weighted_mean

SQUARABLE = float(np.sqrt(np.finfo(np.float32).max))  # 1.8e19: no honest pseudo-gradient comes near


class ServerOptimizer(Strategy):
    needs_base = True
    has_state = True
    default_learning_rate = 1.0
    state_slots: tuple[str, ...] = ()

    def combine(self, job: Job):
        if job.base is None:
            raise BadInput(f"--strategy {self.name} needs --base (the previous global model)")
        learning_rate = job.options.server_learning_rate
        learning_rate = self.default_learning_rate if learning_rate is None else learning_rate
        mean = weighted_mean(job)
        state_in = job.state or {}
        state_out: dict[str, np.ndarray] = {}
        for name, averaged in mean.items():
            if averaged.dtype.kind != "f":
                continue  # counters (e.g. BatchNorm's num_batches_tracked) just take the mean
            base = job.base[name]
            with np.errstate(over="ignore", invalid="ignore"):
                gradient = base.astype(np.float32, copy=False) - averaged  # the pseudo-gradient
            slots = {}
            for slot in self.state_slots:
                previous = state_in.get(f"{slot}/{name}")
                if previous is not None and previous.shape != averaged.shape:
                    raise BadInput(f"server state tensor {slot}/{name} has shape {list(previous.shape)}, "
                                   f"expected {list(averaged.shape)}")
                slots[slot] = np.zeros_like(gradient) if previous is None else previous.astype(np.float32)
            with np.errstate(over="ignore", invalid="ignore"):  # checked below, reported as one line
                step = self.step(gradient, slots, job)
                averaged[...] = base - learning_rate * step
            for tensor, values in [(name, averaged)] + [(f"{slot}/{name}", value) for slot, value in slots.items()]:
                if not np.isfinite(values).all():
                    self._non_finite(job, name, tensor, learning_rate, gradient)
            for slot, value in slots.items():
                state_out[f"{slot}/{name}"] = value
        return mean, state_out

    def _non_finite(self, job: Job, name: str, tensor: str, learning_rate: float, gradient: np.ndarray) -> None:
        """A server step that leaves NaN/Inf would be written as the next global model (or the state every later
        round starts from). When the pseudo-gradient itself is beyond what float32 can square, an update put it
        there: the one farthest from the global model in that tensor is rejected and the round combined again.
        Otherwise (or once one update is left) the settings did it: the stage fails, without a retry."""
        with np.errstate(over="ignore", invalid="ignore"):
            extreme = not float(np.max(np.abs(gradient), initial=0.0)) <= SQUARABLE
        if extreme and len(job.sources) > 1:
            culprit = farthest_source(job.sources, name, job.reference.tensors[name], job.base[name])
            raise NonFiniteValues([culprit], name, overflow=True)
        raise BadInput(f"{self.name}: the server step made tensor {tensor!r} NaN or Inf (server learning rate "
                       f"{learning_rate:g}); lower spec.aggregation.serverLearningRate or check the global model "
                       f"and the server state")

    def step(self, gradient: np.ndarray, slots: dict[str, np.ndarray], job: Job) -> np.ndarray:
        raise NotImplementedError

