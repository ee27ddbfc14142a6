"""The leader Lease on the real control plane: two `fedtask operator --leader-election` processes (on this host,
speaking to the local cluster's API server with the chart's own arguments; the chart's Deployment is scaled to zero
meanwhile) start together. Exactly one holds the Lease and acts. The leader is paused with SIGSTOP for longer than
the lease; the other takes the Lease over and carries the task on; the old leader is resumed with SIGCONT and writes
nothing. No pod name is created twice, every round happens once with one aggregate pod, and the task's status (every
version the API server stored, as a watch sees them) never goes back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.support.cluster import (
    NAMESPACE,
    CreationRecorder,
    LocalCluster,
    TaskRecorder,
    digits_task,
    host_operator_command,
    operator_deployment,
    scale_operator,
    wait_for_phase,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

LEASE_DURATION = 6  # the holder acts for 4 s after each renewal; the other waits 6 s of silence


def operator_command(cluster: LocalCluster) -> tuple[list[str], dict]:
    """The chart's operator arguments and plain environment, for a process on this host, with a short Lease."""
    return host_operator_command(cluster, "--leader-election", f"--lease-duration={LEASE_DURATION}",
                                 f"--lease-namespace={NAMESPACE}", f"--lease-name={chart_lease(cluster)}", "--verbose")


def chart_lease(cluster: LocalCluster) -> str:
    """The chart's Lease (its Deployment is scaled to zero meanwhile): the chart's admission fence checks the pods'
    leader terms against it, so the host replicas are fenced on the server too."""
    return operator_deployment(cluster)["metadata"]["name"]


def lease_holder(cluster: LocalCluster) -> str:
    result = cluster.kubectl("get", "lease", chart_lease(cluster), "-n", NAMESPACE, "-o", "json", check=False)
    if result.returncode != 0:
        return ""
    return (json.loads(result.stdout).get("spec") or {}).get("holderIdentity") or ""


def test_a_paused_leader_is_replaced_and_writes_nothing_when_resumed(cluster: LocalCluster, tmp_path):
    name, rounds = "leased-task", 5
    command, env = operator_command(cluster)
    scale_operator(cluster, 0)
    processes: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for replica in ("host-replica-1", "host-replica-2"):
            logs[replica] = tmp_path / f"{replica}.log"
            processes[replica] = subprocess.Popen(command, env=dict(env, POD_NAME=replica),
                                                  stdout=open(logs[replica], "wb"), stderr=subprocess.STDOUT)
        holder = wait_for(lambda: lease_holder(cluster), timeout=60, interval=0.5, message="a leader")
        leader = holder.rsplit("_", 1)[0]
        other = next(replica for replica in processes if replica != leader)
        with CreationRecorder(cluster, name) as pods, TaskRecorder(cluster, name) as statuses:
            cluster.kubectl("apply", "-f", "-", input=digits_task(name, rounds, {
                "count": 3, "perRound": 3, "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}))
            wait_for(lambda: any("-r0002-train-" in pod for pod in pods.pods), timeout=180, interval=0.5,
                     message="round 2 training")
            assert "acquired by" not in logs[other].read_text(), "two leaders"

            os.kill(processes[leader].pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                new = wait_for(lambda: (lambda h: h if h and not h.startswith(leader + "_") else "")(
                    lease_holder(cluster)), timeout=60, interval=0.2,
                    message="the other replica to take the Lease over")
                took_over = time.monotonic() - paused_at
                assert new.startswith(other + "_") and took_over >= LEASE_DURATION * 0.9, (new, took_over)
                wait_for(lambda: any("-r0003-" in pod for pod in pods.pods), timeout=180, interval=0.5,
                         message="round 3 under the new leader")
            finally:
                os.kill(processes[leader].pid, signal.SIGCONT)
            task = wait_for_phase(cluster, name, timeout=300)
            time.sleep(2)  # whatever the resumed replica would still write
        status = task["status"]
        assert status["phase"] == "Succeeded", status
        assert [entry["round"] for entry in status["history"]] == list(range(1, rounds + 1))
        assert not pods.errors, pods.errors
        twice = {pod: uids for pod, uids in pods.uids.items() if len(uids) > 1}
        assert not twice, f"pod names created twice: {twice}"
        stages: dict[tuple[int, str], int] = {}
        lease_ref = f"{NAMESPACE}/{chart_lease(cluster)}"
        for pod in pods.pods.values():  # each created in a leader term the chart's admission fence checked
            annotations = pod["metadata"].get("annotations") or {}
            assert annotations.get("fedtask.io/leader-lease") == lease_ref, pod["metadata"]
            assert annotations.get("fedtask.io/leader-term", "").split("_")[0] in processes, pod["metadata"]
            assert pod["metadata"]["labels"].get("fedtask.io/leader-fenced") == "true", pod["metadata"]
            labels = pod["metadata"]["labels"]
            key = (int(labels.get("fedtask.io/round", 0)), labels.get("fedtask.io/stage"))
            stages[key] = stages.get(key, 0) + 1
        for number in range(1, rounds + 1):
            assert stages.get((number, "train")) == 3 and stages.get((number, "aggregate")) == 1, (number, stages)
        # No status regression: round and history length never go back in any stored version.
        assert statuses.versions, statuses.errors
        progress = [((task.get("status") or {}).get("round", 0), len((task.get("status") or {}).get("history") or []))
                    for task in statuses.versions]
        assert [v[0] for v in progress] == sorted(v[0] for v in progress), progress
        assert [v[1] for v in progress] == sorted(v[1] for v in progress), progress
        assert f"lost by {holder}" in logs[leader].read_text()
        assert "acquired by" in logs[other].read_text()
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        for replica, log in logs.items():  # the Lease's own requests left out: what the replica did
            lines = [line for line in log.read_text(errors="replace").splitlines()
                     if f"leases/{chart_lease(cluster)}" not in line and "Timer 'task_resync'" not in line]
            print(f"--- {replica}\n" + "\n".join(lines[:60] + ["..."] + lines[-120:]))
        print(cluster.kubectl("get", "federatedtask,pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout)
        print(cluster.kubectl("describe", "federatedtask", name, "-n", NAMESPACE, check=False).stdout[-3000:])
        cluster.kubectl("delete", "federatedtask", name, "-n", NAMESPACE, "--wait=false", check=False)
        scale_operator(cluster, 1)
