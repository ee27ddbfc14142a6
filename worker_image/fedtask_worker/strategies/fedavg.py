"""FedAvg: the sample-weighted mean of the updates (FedProx uses it too; its proximal term lives in training)."""
from __future__ import annotations

from ..aggregation import TORCH_BLOCK_ELEMENTS, reduce_blocks, weighted_sum_backend, weighted_sum_kernel
from .base import Job, Strategy


def weighted_mean(job: Job):
    backend = weighted_sum_backend()
    return reduce_blocks(job.sources, job.reference, weighted_sum_kernel(job.sample_weights(), backend),
                         job.options.threads, block_elements=TORCH_BLOCK_ELEMENTS if backend == "torch" else None)


class FedAvg(Strategy):
    name = "fedavg"

    def combine(self, job: Job):
        return weighted_mean(job), {}


STRATEGY = FedAvg
