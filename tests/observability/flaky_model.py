"""A user model (`flaky_model:build`) whose first build by a pod fails, so that the run has a real failed and retried
pod. The marker file named by FEDTASK_TEST_FLAKY_MARKER records that the failure happened. Builds outside a stage
(the fork server's warm-up) never fail."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fedtask_worker.models import mlp


def _inside_a_stage() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if f"fedtask_worker{os.sep}stages{os.sep}" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def build(input_shape, num_classes, **args):
    marker = Path(os.environ["FEDTASK_TEST_FLAKY_MARKER"])
    if _inside_a_stage() and not marker.exists():
        marker.write_text("failed once\n")
        time.sleep(1.0)  # a pod that fails after running a while, as most do
        raise RuntimeError("flaky model: first build fails on purpose")
    return mlp(input_shape, num_classes, **args)
