"""`fedtask run` end to end: real processes, real training, the real planner and scheduler, a folder as the store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.local_run import EXAMPLES, fedtask, read_task, small_digits_task, start_fedtask
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

def wait_for_rounds(workdir: Path, name: str, rounds: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    path = workdir / name / "federatedtask.json"

    def reached() -> bool:
        assert proc.poll() is None, f"fedtask run ended early:\n{proc.stdout.read()}"
        if not path.exists():
            return False
        try:
            history = json.loads(path.read_text()).get("status", {}).get("history") or []
        except ValueError:  # the file is replaced atomically, but be lenient
            return False
        return len(history) >= rounds

    wait_for(reached, timeout=timeout, interval=0.02, message=f"{name} to reach round {rounds}")


def assert_completed_exactly_once(task: dict, rounds: int) -> None:
    status = task["status"]
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert [entry["round"] for entry in status["history"]] == list(range(1, rounds + 1))
    for entry in status["history"]:
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert len(entry["returned"]) == task["spec"]["devices"]["perRound"]


def test_digits_quick_runs_end_to_end(tmp_path):
    workdir = tmp_path / "runs"
    started = time.monotonic()

    result = fedtask("run", str(EXAMPLES / "digits-quick.yaml"), "--workdir", str(workdir))
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stdout + result.stderr
    task = read_task(workdir, "digits-quick")
    assert task["apiVersion"] == "fedtask.io/v1alpha1" and task["kind"] == "FederatedTask"
    assert task["metadata"]["uid"] and task["metadata"]["generation"] == 1
    assert_completed_exactly_once(task, 12)
    status = task["status"]
    assert status["round"] == 12
    assert {c["type"]: c["status"] for c in status["conditions"]}.get("Succeeded") == "True"
    assert status["completionTime"] and status["startTime"]
    model = Path(status["model"]["uri"].removeprefix("file://"))
    assert model.is_file() and model.suffix == ".safetensors"
    # best goes by the validation split; accuracy is the test split's (digits: 360 test, 144 validation images)
    best = status["best"]
    assert best["validationAccuracy"] == max(entry["validationAccuracy"] for entry in status["history"])
    assert best["accuracy"] == status["history"][best["round"] - 1]["accuracy"]
    assert best["accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert status["evaluation"].startswith("accuracy: the test split (360 samples)") and "(144 samples" in \
        status["evaluation"]
    local_model = workdir / "digits-quick" / "model.safetensors"
    assert local_model.read_bytes() == model.read_bytes()
    assert (workdir / "digits-quick" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "digits-quick" in result.stdout and "Succeeded" in result.stdout  # the summary table
    print(f"digits-quick through fedtask run: {elapsed:.1f}s")


def test_kill_minus_9_of_the_whole_run_then_resume_runs_every_round_exactly_once(tmp_path):
    workdir = tmp_path / "runs"
    manifest = EXAMPLES / "digits-quick.yaml"
    proc = start_fedtask("run", str(manifest), "--workdir", str(workdir))
    wait_for_rounds(workdir, "digits-quick", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    killed_at = len(read_task(workdir, "digits-quick")["status"]["history"])
    assert killed_at < 12

    result = fedtask("run", str(manifest), "--workdir", str(workdir))

    assert result.returncode == 0, result.stdout + result.stderr
    assert_completed_exactly_once(read_task(workdir, "digits-quick"), 12)
    updates = sorted((workdir / "store").rglob("updates/*.safetensors"))
    assert len(updates) == 12 * 5  # one update per round per selected device, none duplicated under new keys


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path):
    workdir = tmp_path / "runs"
    # enough rounds that Ctrl-C lands mid-run: on a quiet machine a round of this task takes ~0.25 s, and 4 rounds
    # had ended (exit 0, Succeeded) before the signal took effect
    manifest = small_digits_task(tmp_path, "digits-ctrlc", rounds=12)
    proc = start_fedtask("run", str(manifest), "--workdir", str(workdir))
    wait_for_rounds(workdir, "digits-ctrlc", 2, proc)

    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)

    assert proc.returncode == 130, output
    assert "Traceback" not in output
    assert "run the same command again" in output
    assert read_task(workdir, "digits-ctrlc")["status"]["phase"] == "Running"
    result = fedtask("run", str(manifest), "--workdir", str(workdir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_completed_exactly_once(read_task(workdir, "digits-ctrlc"), 12)


def test_two_tasks_share_one_fleet_each_with_its_own_progress(tmp_path):
    workdir = tmp_path / "runs"
    gpu = {"requests": {"cpu": "1", "nvidia.com/gpu": 1}}
    first = small_digits_task(tmp_path, "digits-gpu", rounds=2,
                              devices={"count": 4, "perRound": 2, "resources": gpu,
                                       "tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    second = small_digits_task(tmp_path, "digits-cpu", rounds=2,
                               devices={"count": 4, "perRound": 3, "resources": {"requests": {"cpu": "1"}}})

    result = fedtask("run", str(first), str(second), "--nodes", str(EXAMPLES / "nodes-gpu-fleet.yaml"),
                     "--workdir", str(workdir))

    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("digits-gpu", "digits-cpu"):
        task = read_task(workdir, name)
        assert_completed_exactly_once(task, 2)
        assert any(line.startswith(name) for line in result.stdout.splitlines())
    gpu_nodes = {"gpu-a100-1", "gpu-t4-2"}
    for pod in (workdir / "digits-gpu" / "pods").glob("*train*.json"):
        assert json.loads(pod.read_text())["spec"]["nodeName"] in gpu_nodes
    for pod in (workdir / "digits-cpu" / "pods").glob("*train*.json"):
        assert json.loads(pod.read_text())["spec"]["nodeName"] != "cpu-4"  # cordoned


@pytest.mark.parametrize("content, expected", [
    ("apiVersion: fedtask.io/v1alpha1\nkind: FederatedTask\nmetadata: {name: t}\nspec:\n  devices: {perRound: 0}\n",
     "spec.devices.perRound"),
    ("apiVersion: fedtask.io/v1alpha1\nkind: FederatedTask\nmetadata: {name: t}\nspec: {model: [}\n",
     "invalid YAML: line 4"),
    ("apiVersion: fedtask.io/v1alpha1\nkind: FederatedTask\nmetadata: {name: t}\nspec: {rounds: {maxx: 3}}\n",
     "spec.rounds.maxx"),
])
def test_a_bad_manifest_exits_non_zero_with_file_and_field_path(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)

    result = fedtask("run", str(path), "--workdir", str(tmp_path / "runs"), timeout=60)

    assert result.returncode == 2
    assert f"{path}: " in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


def test_a_bad_nodes_file_exits_non_zero_naming_the_field(tmp_path):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("apiVersion: v1\nkind: List\nitems:\n- kind: Node\n  metadata: {}\n")

    result = fedtask("run", str(EXAMPLES / "digits-quick.yaml"), "--nodes", str(nodes), "--workdir",
                     str(tmp_path / "runs"), timeout=60)

    assert result.returncode == 2
    assert "items[0]: metadata.name: required" in result.stderr and "Traceback" not in result.stderr


def test_every_example_passes_fedtask_validate():
    examples = sorted(str(path) for path in EXAMPLES.glob("*.yaml"))
    assert len(examples) >= 4

    result = fedtask("validate", *examples, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": valid") == 6  # the six tasks (shared-pool.yaml holds two); the fleet as Nodes


def test_a_task_the_fleet_cannot_serve_ends_the_run_with_the_reason(tmp_path):
    manifest = small_digits_task(tmp_path, "needs-gpu", rounds=2,
                                 devices={"count": 4, "perRound": 2, "resources": {"requests": {"nvidia.com/gpu": 1}}})

    result = fedtask("run", str(manifest), "--workdir", str(tmp_path / "runs"))  # the built-in fleet has no GPU

    assert result.returncode == 1, result.stdout + result.stderr
    assert "needs-gpu: cannot progress on this fleet" in result.stdout and "nvidia.com/gpu" in result.stdout
    conditions = {c["type"]: c for c in read_task(tmp_path / "runs", "needs-gpu")["status"]["conditions"]}
    assert conditions["Unschedulable"]["status"] == "True"
