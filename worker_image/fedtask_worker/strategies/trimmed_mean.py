"""Coordinate-wise trimmed mean: drop the k = floor(trim_fraction * N) largest and smallest values, average the rest."""
from __future__ import annotations

import math

import numpy as np

from ..aggregation import reduce_blocks, stacked_kernel
from ..errors import BadInput
from .base import Job, Strategy


class TrimmedMean(Strategy):
    name = "trimmed-mean"

    def combine(self, job: Job):
        fraction = job.options.trim_fraction
        if not 0 <= fraction < 0.5:
            raise BadInput(f"--trim-fraction {fraction} must be in [0, 0.5)")
        count = len(job.sources)
        trim = math.floor(fraction * count)

        def reduce(stack: np.ndarray, out: np.ndarray) -> None:
            stack.sort(axis=0)
            np.mean(stack[trim:count - trim], axis=0, out=out)

        return reduce_blocks(job.sources, job.reference, stacked_kernel(reduce), job.options.threads), {}


STRATEGY = TrimmedMean
