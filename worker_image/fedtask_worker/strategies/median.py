"""Coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates; ignores sample counts."""
from __future__ import annotations

import numpy as np

from ..aggregation import reduce_blocks, stacked_kernel
from .base import Job, Strategy


class Median(Strategy):
    name = "median"

    def combine(self, job: Job):
        kernel = stacked_kernel(lambda stack, out: np.median(stack, axis=0, out=out))
        return reduce_blocks(job.sources, job.reference, kernel, job.options.threads), {}


STRATEGY = Median
