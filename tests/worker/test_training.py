"""training.train_local's batches: a small remainder joins the batch before it instead of taking a step of its own."""
from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from fedtask_worker.models import build_model
from fedtask_worker.training import batch_bounds, train_local


@pytest.mark.parametrize("count, batch_size, sizes", [
    (129, 32, [32, 32, 32, 33]),  # a lone last sample joins the batch before it
    (144, 32, [32, 32, 32, 32, 16]),  # half a batch is a batch
    (143, 32, [32, 32, 32, 47]),
    (20, 32, [20]),  # one short batch stays
    (64, 32, [32, 32]),
    (1, 1, [1]),
])
def test_batch_bounds_cover_every_sample_once(count, batch_size, sizes):
    bounds = batch_bounds(count, batch_size)
    assert [stop - start for start, stop in bounds] == sizes
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_train_local_steps_on_those_batches():
    seen: list[int] = []

    def recording_step(model, inputs, targets):
        seen.append(len(targets))
        return nn.functional.cross_entropy(model(inputs), targets)

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((129, 4)).astype(np.float32), rng.integers(0, 3, 129)
    model = build_model("mlp", (4,), 3, {"hidden": [8]}, seed=0)
    _, samples = train_local(model, x, y, epochs=2, batch_size=32, step=recording_step)
    assert samples == 129 and seen == [32, 32, 32, 33] * 2
