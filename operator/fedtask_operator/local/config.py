"""The runtime configuration `fedtask run` gives the pod builder: a folder as the object store, the local worker."""
from __future__ import annotations

from pathlib import Path

from fedtask_operator.core.pods import RuntimeConfig

LOCAL_IMAGE = "fedtask-worker:local"  # not pulled: the process kubelet runs the command with this machine's Python


def local_runtime_config(workdir: Path) -> RuntimeConfig:
    return RuntimeConfig(image=LOCAL_IMAGE, image_pull_policy="Never", store_base_uri=f"file://{workdir}/store",
                         worker_command=("python", "-m", "fedtask_worker"))
