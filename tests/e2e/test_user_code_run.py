"""`fedtask run` with the user's own code (examples/friedman-regression.yaml: a regression, not a classification) and
the model file anyone can load (the README's snippet, run as written on a model `fedtask run` produced)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT = 240


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedtask_operator.cli", *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, cwd=cwd, env=env)


def without_pythonpath() -> dict:
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def python(code: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd,
                            env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_regression_example_runs_from_another_folder_and_its_model_loads(tmp_path):
    workdir = tmp_path / "runs"

    result = run("run", str(EXAMPLES / "friedman-regression.yaml"), "--workdir", str(workdir), cwd=tmp_path,
                 env=without_pythonpath())

    assert result.returncode == 0, result.stdout + result.stderr
    task = json.loads((workdir / "friedman-regression" / "federatedtask.json").read_text())
    status = task["status"]
    assert status["phase"] == "Succeeded"
    reached = [c for c in status["conditions"] if c["type"] == "Succeeded"][0]
    assert reached["reason"] == "TargetAccuracyReached", reached  # R² >= 0.9 within rounds.max
    scores = [entry["accuracy"] for entry in status["history"]]
    assert all(-1.0 < score <= 1.0 for score in scores) and scores[-1] >= 0.9 > scores[0]
    assert all(entry["loss"] > 0 for entry in status["history"])
    model = workdir / "friedman-regression" / "model.safetensors"
    recomputed = python(
        "import torch, friedman\n"
        "from fedtask_worker.models import load_model, read_model_info\n"
        f"model = load_model({str(model)!r})\n"
        "data = friedman.dataset(num_samples=4000)\n"
        "x, y = torch.from_numpy(data['x_val']), torch.from_numpy(data['y_val'])\n"
        "with torch.no_grad():\n"
        "    print(float(friedman.r2(model, x, y)['score']))\n"
        f"info = read_model_info({str(model)!r})\n"
        "print(info.model, info.input_shape, info.num_classes, info.metadata['targets'], info.metadata['metric'])\n",
        cwd=tmp_path, env={**without_pythonpath(), "PYTHONPATH": str(EXAMPLES)})
    score, info = recomputed.splitlines()
    assert float(score) == pytest.approx(status["model"]["accuracy"], abs=1e-5)
    assert info == "friedman:Regressor (10,) 1 values friedman:r2"


def test_user_modules_import_in_pods_started_without_the_fork_server(tmp_path):
    result = run("run", str(EXAMPLES / "friedman-regression.yaml"), "--workdir", str(tmp_path / "runs"),
                 "--no-fork-server", "--set", "spec.rounds.max=1", "--set", "spec.devices.perRound=2",
                 cwd=tmp_path, env=without_pythonpath())

    assert result.returncode == 0, result.stdout + result.stderr
    history = json.loads((tmp_path / "runs" / "friedman-regression" / "federatedtask.json").read_text())[
        "status"]["history"]
    assert [entry["round"] for entry in history] == [1] and history[0]["accuracy"] > 0


def readme_snippet(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- snippet: {name}\b.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no snippet {name}"
    return match.group(1)


def test_the_readme_snippet_loads_a_model_fedtask_run_produced(tmp_path):
    snippet = readme_snippet("load-model")
    assert len(snippet.strip().splitlines()) == 3
    result = run("run", str(EXAMPLES / "digits-quick.yaml"), "--set", "spec.rounds.max=2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads((tmp_path / "fedtask-runs" / "digits-quick" / "federatedtask.json").read_text())["status"]

    output = python(snippet + (
        "import torch\n"
        "from fedtask_worker.datasets import load_dataset\n"
        "data = load_dataset('digits')\n"
        "with torch.no_grad():\n"
        "    predictions = model(torch.from_numpy(data.x_test)).argmax(1).numpy()\n"
        "print((predictions == data.y_test).mean())\n"
        "print(type(model).__name__, model.training, info.model, info.model_args, info.input_shape, "
        "info.num_classes, info.fedtask_version, info.metadata['task'], info.metadata['round'])\n"),
        cwd=tmp_path)

    accuracy, description = output.splitlines()
    assert float(accuracy) == pytest.approx(status["model"]["accuracy"], abs=1e-6)
    assert description == "Sequential False mlp {} (1, 8, 8) 10 0.1.0 digits-quick 2"


def test_pod_environment_puts_the_manifests_folders_first_on_pythonpath(tmp_path):
    from fedtask_operator.local.config import pod_environment

    env = pod_environment([tmp_path / "a" / "one.yaml", tmp_path / "b" / "two.yaml", tmp_path / "a" / "three.yaml"],
                          {"HOME": "/home/x", "PYTHONPATH": f"/opt/lib{os.pathsep}{tmp_path / 'b'}"})

    assert env == {"HOME": "/home/x",
                   "PYTHONPATH": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b"), "/opt/lib"])}


def test_a_forked_pod_imports_from_its_own_pythonpath(tmp_path):
    from fedtask_operator.local.forkserver import ForkServer
    from fedtask_operator.local.kubelet import ProcessKubelet

    code = tmp_path / "code"
    code.mkdir()
    (code / "fedtask_forked_user_model.py").write_text(
        "from torch import nn\n\n\ndef build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "init", "namespace": "default", "uid": "u"},
           "spec": {"restartPolicy": "Never", "containers": [{
               "name": "worker", "image": "local", "command": ["python", "-m", "fedtask_worker"],
               "args": ["init", "--output", f"file://{tmp_path}/global.safetensors", "--dataset", "digits",
                        "--model", "fedtask_forked_user_model:build"],
               "env": [{"name": "PYTHONPATH", "value": str(code)}]}]}}

    with ForkServer(env=without_pythonpath(), preload_datasets=[]) as server:  # the server itself lacks the folder
        kubelet = ProcessKubelet(tmp_path / "pods", launcher=server, base_env=without_pythonpath())
        kubelet.run_pod(pod)
        status = kubelet.wait("init", timeout=120)
        kubelet.close()

    assert status["phase"] == "Succeeded", kubelet.log("init")
    assert (tmp_path / "global.safetensors").stat().st_size > 0
