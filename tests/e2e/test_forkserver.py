"""Worker pods fork from a preloaded server: per-pod start overhead far below a fresh Python process with torch."""
from __future__ import annotations

import statistics
import time

import pytest

from fedtask_operator.local.forkserver import ForkServer, worker_args
from fedtask_operator.local.kubelet import ProcessKubelet, process_start_ticks
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

START_OVERHEAD_TARGET = 0.100  # seconds per pod (issue 3 §6); typically 40-50 ms here
LOADED_MACHINE_MARGIN = 1.5  # the 2 cores are shared with other test runs: allow 50% on top of the target


def worker_pod(name: str, args: list[str], command=("python", "-m", "fedtask_worker"), uid: str = "u") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "worker", "image": "local", "command": list(command), "args": args,
                "env": [{"name": "FEDTASK_MARK", "value": name}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "terminationMessagePath": "/dev/termination-log"}],
                "volumes": [{"name": "tmp", "emptyDir": {}}]}}


@pytest.fixture(scope="module")
def fork_server():
    with ForkServer() as server:
        yield server


def time_pod(kubelet: ProcessKubelet, pod: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    kubelet.run_pod(pod)
    status = kubelet.wait(pod["metadata"]["name"], timeout=120, interval=0.001)
    return time.perf_counter() - started, status


def test_worker_commands_are_recognised():
    assert worker_args(["python", "-m", "fedtask_worker", "train", "--x"]) == ["train", "--x"]
    assert worker_args(["/venv/bin/python3", "-m", "fedtask_worker"]) == []
    assert worker_args(["fedtask-worker", "init"]) == ["init"]
    assert worker_args(["python", "-m", "other"]) is None
    assert worker_args(["/bin/sh", "-c", "fedtask-worker"]) is None


def init_args(tmp_path, name: str) -> list[str]:
    return ["init", "--output", f"file://{tmp_path}/{name}.safetensors", "--dataset", "digits", "--model", "mlp",
            "--result-file", "/dev/termination-log"]


@pytest.fixture(scope="module")
def pod_starts(tmp_path_factory, fork_server) -> dict:
    """Pods run through the fork server and as fresh processes: their kubelets and how long each pod took.

    `--help` does no work, so run_pod -> Succeeded of a `--help` pod is what starting a pod costs; `init` is a real
    stage (torch, the digits dataset, a model, a write), forked and in a fresh process."""
    tmp_path = tmp_path_factory.mktemp("pod-starts")
    forked = ProcessKubelet(tmp_path / "forked", launcher=fork_server)
    plain = ProcessKubelet(tmp_path / "plain")
    time_pod(forked, worker_pod("warm-up", ["--help"]))
    runs: dict[str, list[tuple[float, dict]]] = {"help": [], "forked_init": [], "plain_init": []}
    for i in range(8):
        runs["help"].append(time_pod(forked, worker_pod(f"help-{i}", ["--help"])))
    for i in range(3):
        runs["forked_init"].append(time_pod(forked, worker_pod(f"init-{i}", init_args(tmp_path, f"forked-{i}"))))
    for i in range(1):  # a fresh process costs seconds: one is enough for the comparison
        runs["plain_init"].append(time_pod(plain, worker_pod(f"init-{i}", init_args(tmp_path, f"plain-{i}"))))
    return {"forked": forked, "plain": plain, **runs}


def test_forked_and_fresh_pods_run_the_worker(pod_starts):
    forked, plain = pod_starts["forked"], pod_starts["plain"]
    for i, (_, status) in enumerate(pod_starts["help"]):
        assert status["phase"] == "Succeeded", forked.log(f"help-{i}")
    for i, (_, status) in enumerate(pod_starts["forked_init"]):
        assert status["phase"] == "Succeeded", forked.log(f"init-{i}")
    for i, (_, status) in enumerate(pod_starts["plain_init"]):
        assert status["phase"] == "Succeeded", plain.log(f"init-{i}")
    assert "usage" in forked.log("help-0").lower()


@pytest.mark.timing
def test_per_pod_start_overhead_is_far_below_a_fresh_process(pod_starts):
    start_overhead = statistics.median(seconds for seconds, _ in pod_starts["help"])
    forked_stage = statistics.median(seconds for seconds, _ in pod_starts["forked_init"])
    plain_stage = statistics.median(seconds for seconds, _ in pod_starts["plain_init"])
    print(f"per-pod start overhead (forked, median of 8): {start_overhead * 1000:.1f} ms; init stage: forked "
          f"{forked_stage * 1000:.0f} ms, fresh process {plain_stage * 1000:.0f} ms")
    assert all(status["phase"] == "Succeeded" for runs in ("help", "forked_init", "plain_init")
               for _, status in pod_starts[runs])  # a failed pod's time says nothing
    assert start_overhead <= START_OVERHEAD_TARGET * LOADED_MACHINE_MARGIN
    assert forked_stage <= 0.25 * plain_stage


def test_a_forked_pod_has_its_own_environment_cwd_log_and_result(tmp_path, fork_server):
    kubelet = ProcessKubelet(tmp_path / "k", launcher=fork_server)
    # A stage that fails on bad input still writes its error as the result and exits 2.
    pod = worker_pod("bad-input", ["init", "--output", f"file://{tmp_path}/x.safetensors", "--model", "no-such-model",
                                   "--dataset", "digits", "--result-file", "/dev/termination-log"])

    _, status = time_pod(kubelet, pod)

    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert status["phase"] == "Failed" and terminated["exitCode"] == 2, kubelet.log("bad-input")
    assert "no-such-model" in terminated.get("message", ""), "the worker's error belongs in the termination message"
    assert kubelet.pods["default/bad-input"].pid != fork_server.process.pid


def test_kill_minus_9_of_a_forked_pod_is_observed_as_a_failure(tmp_path, fork_server):
    kubelet = ProcessKubelet(tmp_path / "k", launcher=fork_server)
    # The worker's init on the synthetic dataset with a huge model takes long enough to be killed mid-way.
    pod = worker_pod("victim", ["init", "--output", f"file://{tmp_path}/m.safetensors", "--dataset", "synthetic",
                                "--model", "mlp", "--model-args", '{"hidden": [4096, 4096, 4096]}'])
    kubelet.run_pod(pod)
    pid = kubelet.pods["default/victim"].pid
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
    status = kubelet.wait("victim", timeout=30, interval=0.005)

    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert status["phase"] == "Failed"
    assert terminated["exitCode"] == 137 and terminated.get("signal") == 9


def test_deleting_a_forked_pod_kills_its_process_group(tmp_path, fork_server):
    kubelet = ProcessKubelet(tmp_path / "k", launcher=fork_server)
    pod = worker_pod("deleted", ["init", "--output", f"file://{tmp_path}/m.safetensors", "--dataset", "synthetic",
                                 "--model", "mlp", "--model-args", '{"hidden": [4096, 4096, 4096]}'])
    kubelet.run_pod(pod)
    pid = kubelet.pods["default/deleted"].pid

    kubelet.delete_pod("deleted")

    wait_for(lambda: process_start_ticks(pid) is None, timeout=5, interval=0.01,
             message="the forked pod's process to end after its deletion")
