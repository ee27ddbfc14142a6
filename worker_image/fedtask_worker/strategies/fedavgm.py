"""FedAvgM (Hsu et al. 2019): server momentum v = beta*v + (base - mean); new = base - lr*v."""
from __future__ import annotations

from .server_optimizer import ServerOptimizer


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    default_learning_rate = 1.0
    state_slots = ("momentum",)

    def step(self, gradient, slots, job):
        beta = 0.9 if job.options.server_momentum is None else job.options.server_momentum
        velocity = slots["momentum"]
        velocity *= beta
        velocity += gradient
        return velocity


STRATEGY = FedAvgM
