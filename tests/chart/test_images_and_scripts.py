"""Static checks of what cannot run on our machines (no Docker, no kind): Dockerfiles (hadolint), hack/ scripts
(shellcheck), the kind cluster layout, and that the images agree with the chart."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.tools import CHART, REPO

VENV_BIN = Path(sys.executable).parent
DOCKERFILES = [REPO / "operator" / "Dockerfile", REPO / "worker_image" / "Dockerfile"]
SCRIPTS = sorted(p for p in (REPO / "hack").glob("*.sh") if p.name != "lib.sh")  # lib.sh is sourced, not run


def final_stage(dockerfile: Path) -> list[str]:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    assert starts, f"{dockerfile}: no FROM"
    return lines[starts[-1]:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_passes_hadolint_and_runs_as_non_root(dockerfile: Path) -> None:
    assert dockerfile.exists(), f"{dockerfile.relative_to(REPO)} is missing"
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    users = [line.split()[1] for line in final_stage(dockerfile) if line.upper().startswith("USER ")]
    assert users, f"{dockerfile}: the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{dockerfile}: USER {users[-1]} must be a numeric non-root uid"


def test_operator_image_user_is_the_one_the_chart_runs_as() -> None:
    users = [line.split()[1] for line in final_stage(DOCKERFILES[0]) if line.upper().startswith("USER ")]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert users[-1] == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"


def test_operator_image_entrypoint_matches_the_chart_args() -> None:
    stage = "\n".join(final_stage(DOCKERFILES[0]))
    assert 'ENTRYPOINT ["fedtask"]' in stage  # the chart's args start with the subcommand "operator"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    for heavy in (".git", ".venv", ".tools", "runs", "tests"):
        assert heavy in patterns, f".dockerignore must exclude {heavy}"


@pytest.mark.parametrize("script", SCRIPTS + [REPO / "hack" / "lib.sh"], ids=lambda p: p.name)
def test_hack_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run([str(VENV_BIN / "shellcheck"), "-x", str(script)], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hack_scripts_cover_the_kind_walkthrough() -> None:
    names = {script.name for script in SCRIPTS}
    assert {"kind-up.sh", "fake-gpu.sh", "build-images.sh", "install-chart.sh", "run-example.sh",
            "dashboard.sh", "kind-demo.sh", "install-test-tools.sh"} <= names
    for script in SCRIPTS:
        assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    # Every script the demo runs and every file it applies exists.
    for script in SCRIPTS:
        for referenced in re.findall(r'"\$REPO/([^"$]+)"', script.read_text()):
            assert (REPO / referenced).exists(), f"{script.name} refers to missing {referenced}"
        for example in re.findall(r"\$REPO/(examples/[\w.-]+\.yaml)", script.read_text()):
            assert (REPO / example).exists(), f"{script.name} applies missing {example}"


def test_kind_cluster_has_a_control_plane_and_labelled_device_workers() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1
    devices = [node for node in config["nodes"]
               if node["role"] == "worker" and node.get("labels", {}).get("fedtask.io/device") == "true"]
    assert len(devices) >= 3
    gpu_nodes = [node for node in devices if node["labels"].get("nvidia.com/gpu.present") == "true"]
    assert len(gpu_nodes) == 1
    # hack/fake-gpu.sh finds the GPU nodes by that very label.
    assert "nvidia.com/gpu.present=true" in (REPO / "hack" / "fake-gpu.sh").read_text()


def test_operator_image_exposes_the_chart_ports() -> None:
    exposed = {int(port) for line in final_stage(DOCKERFILES[0]) if line.upper().startswith("EXPOSE ")
               for port in line.split()[1:]}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert exposed == {values["metrics"]["port"], values["operator"]["healthPort"]}
