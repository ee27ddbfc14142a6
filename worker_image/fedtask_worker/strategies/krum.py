"""Krum (Blanchard et al. 2017): pick the update closest to its N - f - 2 nearest neighbours (f = --byzantine)."""
from __future__ import annotations

import threading

import numpy as np

from ..aggregation import NonFiniteValues, non_finite_rows, reduce_blocks
from ..errors import BadInput
from .base import Job, Strategy


def pairwise_squared_distances(job: Job) -> np.ndarray:
    """N x N squared Euclidean distances, accumulated block by block in float64 (memory: one block stack)."""
    count = len(job.sources)
    total = np.zeros((count, count))
    lock = threading.Lock()

    def kernel(context, sources, out_block):
        size = context.stop - context.start
        stack = context.buffer("stack", (count, size), np.dtype(np.float64))
        read_buffer = context.buffer("read", (size,), context.info.numpy_dtype)
        for index, source in enumerate(sources):
            stack[index] = source.read(context.tensor, context.start, context.stop, read_buffer)
        culprits = non_finite_rows(stack)
        if culprits:  # NaN distances would make any update look closest
            raise NonFiniteValues([sources[row] for row in culprits], context.tensor)
        gram = stack @ stack.T
        norms = np.diag(gram)
        distances = np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0)
        with lock:
            np.add(total, distances, out=total)
        out_block[...] = stack[0]  # any finite placeholder, keeps the NaN/Inf check meaningful

    reduce_blocks(job.sources, job.reference, kernel, job.options.threads)
    return total


class Krum(Strategy):
    name = "krum"

    def combine(self, job: Job):
        count, byzantine = len(job.sources), job.options.byzantine
        if byzantine < 0 or count < 2 * byzantine + 3:
            raise BadInput(f"krum with --byzantine {byzantine} needs at least {2 * byzantine + 3} valid updates, "
                           f"got {count}")
        distances = pairwise_squared_distances(job)
        neighbours = count - byzantine - 2
        scores = [np.sort(np.delete(distances[i], i))[:neighbours].sum() for i in range(count)]
        chosen = int(np.argmin(scores))

        def copy_kernel(context, sources, out_block):
            out_block[...] = sources[chosen].read(context.tensor, context.start, context.stop,
                                                  context.buffer("read", (context.stop - context.start,),
                                                                 context.info.numpy_dtype))

        return reduce_blocks(job.sources, job.reference, copy_kernel, job.options.threads), {}


STRATEGY = Krum
