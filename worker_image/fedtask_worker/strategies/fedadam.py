"""FedAdam (Reddi et al. 2021): Adam on the pseudo-gradient; m and v persist as server state between rounds."""
from __future__ import annotations

import numpy as np

from .server_optimizer import ServerOptimizer

BETA2 = 0.99
TAU = 1e-3


class FedAdam(ServerOptimizer):
    name = "fedadam"
    default_learning_rate = 0.1
    state_slots = ("m", "v")

    def step(self, gradient, slots, job):
        beta1 = 0.9 if job.options.server_momentum is None else job.options.server_momentum
        first, second = slots["m"], slots["v"]
        first *= beta1
        first += (1 - beta1) * gradient
        second *= BETA2
        second += (1 - BETA2) * np.square(gradient)
        return first / (np.sqrt(second) + TAU)


STRATEGY = FedAdam
