"""`fedtask schedule` as a user runs it: a real subprocess over kubectl-style dumps."""
import json
import subprocess
import sys

import pytest
import yaml

from fedtask_operator.core.scheduling.synthetic import make_node, make_pod, make_train_pod

VISION = """apiVersion: fedtask.io/v1alpha1
kind: FederatedTask
metadata: {name: vision, namespace: ml}
spec:
  data: {source: hostPath}
  devices: {perRound: 1, resources: {requests: {nvidia.com/gpu: 1, cpu: 500m}}}
"""
SPEECH = """apiVersion: fedtask.io/v1alpha1
kind: FederatedTask
metadata: {name: speech, namespace: ml}
spec:
  data: {source: hostPath}
  devices: {perRound: 2, resources: {requests: {cpu: "1", memory: 1Gi}}}
  scheduling: {priority: 1}
"""


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "schedule", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def dumps(tmp_path):
    nodes = [make_node("gpu-a", cpu="8", gpus=1, gpu_product="NVIDIA-A100-SXM4-40GB"), make_node("cpu-1", cpu="4"),
             make_node("cpu-2", cpu="2"), make_node("cpu-3", cpu="4"), make_node("down", ready=False),
             make_node("cord", unschedulable=True),
             make_node("tainted", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])]
    pods = [make_train_pod("ml/other", "cpu-2"), make_pod("big", "cpu-3", {"cpu": "3500m"})]
    (tmp_path / "nodes.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods}))
    (tmp_path / "vision.yaml").write_text(VISION)
    (tmp_path / "speech.yaml").write_text(SPEECH)
    return tmp_path


def test_json_output_lists_assignments_and_every_excluded_reason(dumps):
    done = run("--nodes", "nodes.json", "--pods", "pods.yaml", "vision.yaml", "speech.yaml", "--json", cwd=dumps)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # speech (priority 1) can only use gpu-a and cpu-1 (cpu-2 is taken, cpu-3 full), so vision waits for gpu-a
    assert sorted(out["assignments"]["speech"]) == ["cpu-1", "gpu-a"] and out["assignments"]["vision"] == []
    assert "higher-priority tasks hold 1 of them (ml/speech: 1)" in out["waiting"]["vision"]
    assert set(out) >= {"assignments", "excluded", "periodSeconds"}
    assigned = {n for nodes in out["assignments"].values() for n in nodes}
    assert set(out["excluded"]) == {"gpu-a", "cpu-1", "cpu-2", "cpu-3", "down", "cord", "tainted"} - assigned
    assert out["excluded"]["down"].startswith("NotReady; ")
    assert out["excluded"]["cord"].startswith("cordoned; ")
    assert "vision: short of nvidia.com/gpu (0 free, 1 requested)" in out["excluded"]["cpu-3"]
    assert "speech: short of cpu (500m free, 1 requested)" in out["excluded"]["cpu-3"]
    assert "speech: taken by ml/other" in out["excluded"]["cpu-2"]
    assert "taint dedicated=db:NoSchedule" in out["excluded"]["tainted"]
    assert out["periodSeconds"] > 0


def test_table_output_and_policy_override(dumps):
    done = run("--nodes", "nodes.json", "--pods", "pods.yaml", "speech.yaml", "--policy", "round-robin", cwd=dumps)
    assert done.returncode == 0, done.stderr
    assert "speech (round-robin): 2 devices" in done.stdout
    assert "nodes not assigned:" in done.stdout and "NotReady" in done.stdout
    assert "period time" in done.stdout


@pytest.mark.parametrize("files, message", [
    (["--nodes", "missing.json", "vision.yaml"], "missing.json: cannot read"),
    (["--nodes", "broken.json", "vision.yaml"], "broken.json: invalid JSON: line 1 column 2"),
    (["--nodes", "pods.yaml", "vision.yaml"], "pods.yaml: item 0: expected a Node, found 'Pod'"),
    (["--nodes", "nodes.json", "bad-task.yaml"], "bad-task.yaml: spec.devices.perRound"),
    (["--nodes", "bad-nodes.json", "vision.yaml"], "status.allocatable.cpu: invalid quantity 'many'"),
])
def test_bad_files_give_one_clear_line(dumps, files, message):
    (dumps / "broken.json").write_text("{not json")
    (dumps / "bad-task.yaml").write_text(VISION.replace("perRound: 1", "perRound: 0"))
    (dumps / "bad-nodes.json").write_text(json.dumps([make_node("n", cpu="many")]))
    done = run(*files, cwd=dumps)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_json_output_shows_the_period_and_each_task_s_cost_and_fairness(dumps):
    task = yaml.safe_load(SPEECH)
    task["status"] = {"period": 6, "participation": {"cpu-1": 4}}
    (dumps / "speech-status.yaml").write_text(yaml.safe_dump(task))
    done = run("--nodes", "nodes.json", "--pods", "pods.yaml", "vision.yaml", "speech-status.yaml", "--json",
               "--fairness-weight", "2.5", cwd=dumps)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["period"] == 7  # the next period after the one the task's status records
    speech = out["tasks"]["speech"]
    assert speech["period"] == 7 and speech["fairnessWeight"] == 2.5 and speech["optimal"]
    assert speech["cost"] == pytest.approx(speech["roundSeconds"] / speech["timeScale"]
                                           + 2.5 * speech["unfairness"], rel=1e-5)
    assert out["cost"] == pytest.approx(speech["cost"], rel=1e-5)  # vision waits: it adds nothing
    assert 0 < speech["jain"] <= 1 and "vision" not in out["tasks"]


def test_a_task_whose_request_cannot_be_read_is_refused_and_the_others_scheduled(dumps):
    """Issue 12: `cpu: 1e99` passes the CRD pattern (and `fedtask validate`) but no scheduler can read it; that task is
    refused in the output, naming the field, and the other task still gets its devices (it used to be exit 2)."""
    (dumps / "huge.yaml").write_text(VISION.replace("name: vision", "name: huge").replace("cpu: 500m", "cpu: 1e99"))
    done = run("--nodes", "nodes.json", "--pods", "pods.yaml", "huge.yaml", "speech.yaml", "--json", cwd=dumps)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["refused"] == ["huge"] and out["assignments"]["huge"] == []
    assert "spec.devices.resources.requests.cpu: invalid quantity '1e99': exponent out of range" in \
        out["waiting"]["huge"]
    assert sorted(out["assignments"]["speech"]) == ["cpu-1", "gpu-a"]
    table = run("--nodes", "nodes.json", "--pods", "pods.yaml", "huge.yaml", "speech.yaml", cwd=dumps)
    assert "huge (time-fair): refused: task ml/huge: spec.devices.resources.requests.cpu" in table.stdout
