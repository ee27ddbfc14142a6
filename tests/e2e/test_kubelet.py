"""The process kubelet runs real Pod manifests as real processes."""
from __future__ import annotations

import json
import os

import pytest

from fedtask_operator.local.kubelet import ProcessKubelet, process_start_ticks
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def make_pod(name: str, script: str, *, uid: str = "uid-1", env=None, volumes=None, mounts=None,
             message_path: str | None = None, policy: str | None = None) -> dict:
    container = {"name": "main", "image": "ignored", "command": ["/bin/sh", "-c"], "args": [script]}
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
    if message_path:
        container["terminationMessagePath"] = message_path
    if policy:
        container["terminationMessagePolicy"] = policy
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes or []}}


def terminated(status: dict) -> dict:
    return status["containerStatuses"][0]["state"]["terminated"]


def test_pod_runs_to_success_with_result_file_and_log(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k")
    pod = make_pod("ok", 'echo hello; echo "{\\"accuracy\\": 0.9}" > /dev/termination-log')

    assert kubelet.run_pod(pod)["phase"] in ("Pending", "Running")
    status = kubelet.wait("ok", timeout=30)

    assert status["phase"] == "Succeeded"
    assert terminated(status)["exitCode"] == 0
    assert json.loads(terminated(status)["message"]) == {"accuracy": 0.9}
    assert "hello" in kubelet.log("ok")


def test_thread_counts_from_a_large_cpu_request_are_capped_at_this_machines_cores(tmp_path):
    # the pod builder sets them from the CPU request (cpu: 64 -> 64 threads); pods here share one machine
    kubelet = ProcessKubelet(tmp_path / "k")
    env = [{"name": "OMP_NUM_THREADS", "value": "64"}, {"name": "FEDTASK_TORCH_THREADS", "value": "64"}]
    kubelet.run_pod(make_pod("threads", 'echo "threads=$OMP_NUM_THREADS/$FEDTASK_TORCH_THREADS"', env=env))

    assert kubelet.wait("threads", timeout=30)["phase"] == "Succeeded"
    cores = min(64, os.cpu_count() or 1)
    assert f"threads={cores}/{cores}" in kubelet.log("threads")


def test_failed_pod_reports_exit_code_and_falls_back_to_logs(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k")
    kubelet.run_pod(make_pod("bad", "echo boom-happened >&2; exit 3", policy="FallbackToLogsOnError"))

    status = kubelet.wait("bad", timeout=30)

    assert status["phase"] == "Failed"
    assert terminated(status)["exitCode"] == 3
    assert "boom-happened" in terminated(status)["message"]


def test_poll_reports_each_status_change_once_through_the_callback(tmp_path):
    seen = []
    release = tmp_path / "release"  # the pod runs until the test creates this file
    kubelet = ProcessKubelet(tmp_path / "k", on_status=lambda pod, status: seen.append(status["phase"]))
    kubelet.run_pod(make_pod("p", f"while [ ! -e '{release}' ]; do sleep 0.01; done"))

    kubelet.poll()
    release.touch()
    kubelet.wait("p", timeout=30)
    changes = kubelet.poll()
    assert kubelet.poll() == []

    assert seen == ["Running", "Succeeded"]
    assert [status["phase"] for _, status in changes] == ["Succeeded"]


def test_termination_message_is_capped_at_4_kib(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k")
    kubelet.run_pod(make_pod("big", "head -c 10000 /dev/zero | tr '\\0' x > /dev/termination-log"))

    status = kubelet.wait("big", timeout=30)

    assert len(terminated(status)["message"]) == 4096


def test_custom_termination_message_path_is_rewritten(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k")
    kubelet.run_pod(make_pod("custom", "echo done > /results/msg", message_path="/results/msg"))

    assert terminated(kubelet.wait("custom", timeout=30))["message"] == "done"


def test_env_values_secrets_config_maps_and_field_refs(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k", secrets={"store-creds": {"key": "s3cr3t"}},
                             config_maps={"default/settings": {"mode": "fast"}})
    env = [
        {"name": "PLAIN", "value": "v1"},
        {"name": "DERIVED", "value": "$(PLAIN)-x"},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "store-creds", "key": "key"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
    ]
    kubelet.run_pod(make_pod("env", 'echo "$PLAIN $DERIVED $SECRET $MODE $POD ${MAYBE:-unset}" '
                                    "> /dev/termination-log", env=env))

    assert terminated(kubelet.wait("env", timeout=30))["message"] == "v1 v1-x s3cr3t fast env unset"


def test_missing_secret_fails_the_pod_with_a_clear_reason(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k", secrets={})
    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "store-creds", "key": "accessKey"}}}]

    status = kubelet.run_pod(make_pod("nosecret", "true", env=env))

    assert status["phase"] == "Failed"
    assert status["reason"] == "CreateContainerConfigError"
    assert 'secret "store-creds" not found' in status["message"]
    assert "KEY" in terminated(status)["message"]


def test_volumes_map_to_folders(tmp_path):
    host_root = tmp_path / "host"
    kubelet = ProcessKubelet(tmp_path / "k", host_path_root=host_root, claims_root=tmp_path / "claims")
    volumes = [
        {"name": "data", "hostPath": {"path": "/var/lib/fedtask/data", "type": "DirectoryOrCreate"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "claim", "persistentVolumeClaim": {"claimName": "fedtask-data-node-1"}},
    ]
    mounts = [{"name": "data", "mountPath": "/data"}, {"name": "scratch", "mountPath": "/tmp"},
              {"name": "claim", "mountPath": "/claim"}]
    script = 'echo h > /data/f && echo c > /claim/f && echo "$TMPDIR" > /dev/termination-log'
    kubelet.run_pod(make_pod("vols", script, volumes=volumes, mounts=mounts))

    status = kubelet.wait("vols", timeout=30)

    assert status["phase"] == "Succeeded", kubelet.log("vols")
    assert (host_root / "var/lib/fedtask/data/f").read_text() == "h\n"
    assert (tmp_path / "claims/fedtask-data-node-1/f").read_text() == "c\n"
    assert terminated(status)["message"] == str(tmp_path / "k/default/vols/volumes/scratch")


def test_missing_host_path_directory_fails_the_pod(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k", host_path_root=tmp_path / "host")
    volumes = [{"name": "data", "hostPath": {"path": "/nowhere", "type": "Directory"}}]

    status = kubelet.run_pod(make_pod("nomount", "true", volumes=volumes,
                                      mounts=[{"name": "data", "mountPath": "/data"}]))

    assert status["phase"] == "Failed" and status["reason"] == "FailedMount"


def test_delete_kills_the_whole_process_group(tmp_path):
    kubelet = ProcessKubelet(tmp_path / "k")
    kubelet.run_pod(make_pod("sleeper", "sleep 60 & echo $! > child.pid; wait"))
    child_pid_file = tmp_path / "k/default/sleeper/child.pid"
    wait_for(lambda: child_pid_file.exists() and child_pid_file.read_text().strip(), timeout=10, interval=0.01,
             message="the pod to write its child's pid")
    child = int(child_pid_file.read_text())

    assert kubelet.delete_pod("sleeper")

    wait_for(lambda: process_start_ticks(child) is None, timeout=5, interval=0.01,
             message="the pod's child to end after the delete")
    assert kubelet.status("sleeper") is None


def test_a_new_kubelet_adopts_a_running_pod_and_sees_it_finish(tmp_path):
    release = tmp_path / "release"  # the pod runs until the test creates this file
    first = ProcessKubelet(tmp_path / "k")
    pod = make_pod("long", f"while [ ! -e '{release}' ]; do sleep 0.01; done; echo finished > /dev/termination-log")
    first.run_pod(pod)
    pid = first.pods["default/long"].pid
    del first  # the runtime died; the pod's process runs on in its own session

    second = ProcessKubelet(tmp_path / "k")
    assert second.run_pod(pod)["phase"] == "Running"
    assert second.pods["default/long"].pid == pid
    release.touch()
    status = second.wait("long", timeout=30)

    assert status["phase"] == "Succeeded"
    assert terminated(status)["message"] == "finished"


def test_a_pod_that_finished_unwatched_is_adopted_with_its_result(tmp_path):
    first = ProcessKubelet(tmp_path / "k")
    pod = make_pod("quick", "echo 7 > /dev/termination-log; exit 4")
    first.run_pod(pod)
    exit_file = tmp_path / "k/default/quick/exit.json"
    wait_for(exit_file.exists, timeout=10, interval=0.01, message="the pod's exit record")

    status = ProcessKubelet(tmp_path / "k").run_pod(pod)

    assert status["phase"] == "Failed"
    assert terminated(status)["exitCode"] == 4 and terminated(status)["message"] == "7"


def test_a_pod_killed_unwatched_is_run_again_and_a_new_uid_is_a_new_pod(tmp_path):
    first = ProcessKubelet(tmp_path / "k")
    pod = make_pod("victim", "sleep 60")
    first.run_pod(pod)
    old_pid = first.pods["default/victim"].pid
    os.killpg(old_pid, 9)
    first.pods["default/victim"].popen.wait()

    second = ProcessKubelet(tmp_path / "k")
    second.run_pod(pod)
    assert second.pods["default/victim"].pid != old_pid
    second.delete_pod("victim")

    third = ProcessKubelet(tmp_path / "k")
    third.run_pod(make_pod("victim", "exit 0", uid="uid-2"))
    assert third.wait("victim", timeout=30)["phase"] == "Succeeded"
