"""`fedtask run` needs what the `local` extra installs and nothing of the operator's: it runs a task to the end with
kopf, the Kubernetes client and prometheus_client made unimportable in every process (the run, the fork server, the
pods), as on a machine that installed `fedtask[local]` only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("kopf", "kubernetes", "prometheus_client")
SITECUSTOMIZE = f'''
import importlib.abc
import os
import sys

BLOCKED = {BLOCKED!r}


class OperatorDependencies(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in fedtask[local])", name=name)
        return None


sys.meta_path.insert(0, OperatorDependencies())
open(os.path.join(os.environ["FEDTASK_BLOCKER_SEEN"], str(os.getpid())), "w").close()
'''


def test_fedtask_run_needs_neither_kopf_nor_the_kubernetes_client(tmp_path):
    site, seen = tmp_path / "site", tmp_path / "seen"
    site.mkdir()
    seen.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(site), "FEDTASK_BLOCKER_SEEN": str(seen)}
    for module in BLOCKED:
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=env,
                               timeout=60)
        assert probe.returncode == 1 and "blocked: not in fedtask[local]" in probe.stderr, probe.stderr
    before = len(list(seen.iterdir()))

    result = subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "run", str(ROOT / "examples" /
                             "digits-quick.yaml"), "--set", "spec.rounds.max=2", "--workdir", str(tmp_path / "runs")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)

    assert result.returncode == 0, result.stdout + result.stderr
    task = json.loads((tmp_path / "runs" / "digits-quick" / "federatedtask.json").read_text())
    assert task["status"]["phase"] == "Succeeded" and len(task["status"]["history"]) == 2
    assert len(list(seen.iterdir())) - before >= 2  # the run and its fork server started under the blocker
