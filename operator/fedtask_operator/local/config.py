"""The runtime configuration `fedtask run` gives the pod builder: a folder as the object store, the local worker; and
the environment its pods start from."""
from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedtask_operator.core.confinement import Confinement
from fedtask_operator.core.pods import RuntimeConfig

LOCAL_IMAGE = "fedtask-worker:local"  # not pulled: the process kubelet runs the command with this machine's Python


def local_runtime_config(workdir: Path, confinement: Confinement | None = None) -> RuntimeConfig:
    return RuntimeConfig(image=LOCAL_IMAGE, image_pull_policy="Never", store_base_uri=workdir_store_uri(workdir),
                         worker_command=("python", "-m", "fedtask_worker"), confinement=confinement or Confinement())


def workdir_store_uri(workdir: Path) -> str:
    """The store's file:// URI, percent-encoded: a workdir with `#`, `?` or `%` in its name would otherwise end every
    URI's path there (the worker reads file URIs with urlparse + unquote; runtime.local_path does the same)."""
    return f"file://{urllib.parse.quote(str(workdir))}/store"


def pod_environment(manifest_paths: Iterable[str | os.PathLike],
                    environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`environ` with the manifests' folders first on PYTHONPATH (in the order given, each once, before what
    PYTHONPATH held already): a manifest's `module:callable` references (spec.model.name, spec.data.dataset,
    spec.training.step, spec.evaluation.function) import the modules next to it, as a user's image would have them
    installed, from any working directory and without setting PYTHONPATH by hand."""
    folders: list[str] = []
    for path in manifest_paths:
        folder = str(Path(path).resolve().parent)
        if folder not in folders:
            folders.append(folder)
    folders += [entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep) if entry and entry not in folders]
    return {**environ, "PYTHONPATH": os.pathsep.join(folders)}
