"""`fedtask run` and its work folder, for the end-to-end tests of the local runtime."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT = 240


def fedtask(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`fedtask ARGS...` in the repository (or `cwd`), its output captured; `timeout` defaults to RUN_TIMEOUT."""
    return subprocess.run([sys.executable, "-m", "fedtask_operator.cli", *args], capture_output=True, text=True,
                          timeout=kwargs.pop("timeout", RUN_TIMEOUT), cwd=kwargs.pop("cwd", ROOT), **kwargs)


def start_fedtask(*args: str) -> subprocess.Popen:
    """In its own session, so the test can kill the whole process group like a user's kill -9 or Ctrl-C."""
    return subprocess.Popen([sys.executable, "-m", "fedtask_operator.cli", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def read_task(workdir: Path, name: str) -> dict:
    """The task's record in a `fedtask run` work folder (spec and status)."""
    return json.loads((workdir / name / "federatedtask.json").read_text())


def small_digits_task(tmp_path: Path, name: str, rounds: int, **spec_changes) -> Path:
    """examples/digits-quick.yaml renamed, with `rounds` rounds and the given spec fields replaced, in `tmp_path`."""
    manifest = yaml.safe_load((EXAMPLES / "digits-quick.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["rounds"]["max"] = rounds
    for key, value in spec_changes.items():
        manifest["spec"][key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path
