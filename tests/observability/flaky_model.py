"""A user model (`flaky_model:build`) whose first build in a run fails, so that the run has a real failed and
retried pod: the marker file named by FEDTASK_TEST_FLAKY_MARKER records that the failure happened."""
from __future__ import annotations

import os
from pathlib import Path

from fedtask_worker.models import mlp


def build(input_shape, num_classes, **args):
    marker = Path(os.environ["FEDTASK_TEST_FLAKY_MARKER"])
    if not marker.exists():
        marker.write_text("failed once\n")
        raise RuntimeError("flaky model: first build fails on purpose")
    return mlp(input_shape, num_classes, **args)
