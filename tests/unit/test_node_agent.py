"""The node agent's pieces that need no API server: images -> commands, pod and node status, probes, Service names.
(The agent against a real API server: tests/cluster.)"""
from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from fedtask_operator.agent.hosts import mismatched_ports, render_hosts
from fedtask_operator.agent.images import ImageMap, ImageMapError, read_dockerfile, repository_of
from fedtask_operator.agent.probes import ProbeState, new_probes, run_probe
from fedtask_operator.agent.status import ContainerRecord, build_node, build_node_status, build_pod_status

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-01-01T00:00:10Z"


# ------------------------------------------------------------------------------------------------------------ images
def test_dockerfiles_of_the_repository_give_their_entrypoints():
    operator = read_dockerfile(ROOT / "operator" / "Dockerfile")
    worker = read_dockerfile(ROOT / "worker_image" / "Dockerfile")
    assert (operator.entrypoint, operator.cmd) == (("fedtask",), ("operator",))
    assert (worker.entrypoint, worker.cmd) == (("fedtask-worker",), ())


def test_last_stage_and_shell_form(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text('FROM a AS build\nENTRYPOINT ["build-only"]\n# comment\nFROM b\n'
                          'CMD ["--flag", \\\n  "x"]\nENTRYPOINT exec server --port 1\n')
    image = read_dockerfile(dockerfile)
    assert image.entrypoint == ("/bin/sh", "-c", "exec server --port 1")
    assert image.cmd == ("--flag", "x")
    dockerfile.write_text("FROM b\nRUN true\n")
    with pytest.raises(ImageMapError, match="no ENTRYPOINT or CMD"):
        read_dockerfile(dockerfile)


def test_container_command_line_as_a_runtime_builds_it():
    images = ImageMap()
    images.add_dockerfile(f"fedtask-operator={ROOT / 'operator' / 'Dockerfile'}")
    images.add_entrypoint("quay.io/minio/minio=/opt/bin/minio")
    images.add_entrypoint("quay.io/minio/minio:special='/opt/other minio' --flag")

    assert images.argv({"image": "fedtask-operator:0.1.0", "args": ["operator", "-A"]}) == ["fedtask", "operator",
                                                                                             "-A"]
    assert images.argv({"image": "fedtask-operator"}) == ["fedtask", "operator"]  # CMD when no args
    assert images.argv({"image": "quay.io/minio/minio:RELEASE.1", "args": ["server", "/data"]}) == [
        "/opt/bin/minio", "server", "/data"]
    assert images.argv({"image": "quay.io/minio/minio:special"}) == ["/opt/other minio", "--flag"]
    assert images.argv({"image": "unknown:1", "command": ["python", "-m", "x"], "args": ["y"]}) == [
        "python", "-m", "x", "y"]
    with pytest.raises(ImageMapError, match='image "unknown:1": the node agent has no entrypoint'):
        images.argv({"image": "unknown:1", "args": ["y"]})
    with pytest.raises(ImageMapError, match="expected REPOSITORY=VALUE"):
        images.add_entrypoint("no-equals-sign")


def test_repository_of_strips_tag_and_digest_but_not_a_registry_port():
    assert repository_of("fedtask-operator:0.1.0") == "fedtask-operator"
    assert repository_of("localhost:5000/team/app:1.0@sha256:abc") == "localhost:5000/team/app"
    assert repository_of("localhost:5000/team/app") == "localhost:5000/team/app"


# ------------------------------------------------------------------------------------------------------ pod status
POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
       "spec": {"containers": [{"name": "main", "image": "img:1"}]},
       "status": {"conditions": [{"type": "PodScheduled", "status": "True",
                                  "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


def running(started="2026-01-01T00:00:05Z"):
    return {"phase": "Running", "containerStatuses": [{"name": "main", "state": {"running": {"startedAt": started}}}]}


def terminated(code, message=""):
    state = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
             "startedAt": "2026-01-01T00:00:05Z", "finishedAt": "2026-01-01T00:00:09Z"}
    if message:
        state["message"] = message
    return {"phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "main", "state": {"terminated": state}}]}


def conditions(status):
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_pod_status_pending_running_ready_and_finished():
    record = ContainerRecord(acknowledged="2026-01-01T00:00:01Z")
    pending = build_pod_status(POD, None, record, NOW, "10.0.0.5")
    assert pending["phase"] == "Pending"
    assert pending["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert conditions(pending) == {"PodScheduled": "True", "PodReadyToStartContainers": "False",
                                   "Initialized": "True", "Ready": "False", "ContainersReady": "False"}
    assert pending["conditions"][0] == POD["status"]["conditions"][0]  # the scheduler's condition, untouched

    started = build_pod_status(POD, running(), record, NOW, "10.0.0.5", container_id="process://n/7")
    assert started["phase"] == "Running" and conditions(started)["Ready"] == "False"  # not ready until probed
    record.ready = True
    ready = build_pod_status(POD, running(), record, "2026-01-01T00:00:20Z", "10.0.0.5", container_id="process://n/7")
    assert conditions(ready)["Ready"] == "True"
    assert {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}["Ready"] == "2026-01-01T00:00:20Z"
    assert ready["containerStatuses"][0] == {
        "name": "main", "image": "img:1", "imageID": "", "ready": True, "started": True, "restartCount": 0,
        "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}, "lastState": {},
        "containerID": "process://n/7"}
    assert (ready["podIP"], ready["hostIP"], ready["startTime"]) == ("10.0.0.5", "10.0.0.5", "2026-01-01T00:00:01Z")

    record.ready = False
    failed = build_pod_status(POD, terminated(3, "bad input"), record, "2026-01-01T00:00:30Z", "10.0.0.5")
    assert failed["phase"] == "Failed"
    assert failed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert failed["containerStatuses"][0]["state"]["terminated"]["message"] == "bad input"
    assert {c["type"]: c.get("reason") for c in failed["conditions"]}["Ready"] == "PodCompleted"


def test_restarting_container_stays_running_with_its_last_state():
    record = ContainerRecord(acknowledged=NOW, restart_count=1, last_terminated=terminated(1)["containerStatuses"][0]
                             ["state"]["terminated"], waiting=("CrashLoopBackOff", "back-off 10s"))
    status = build_pod_status(POD, terminated(1), record, NOW, "10.0.0.5", restarting=True)
    entry = status["containerStatuses"][0]
    assert status["phase"] == "Running"
    assert entry["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
    assert entry["lastState"]["terminated"]["exitCode"] == 1 and entry["restartCount"] == 1


def test_waiting_for_a_secret_is_pending_with_the_reason():
    record = ContainerRecord(acknowledged=NOW, waiting=("CreateContainerConfigError", 'secret "s" not found'))
    status = build_pod_status(POD, None, record, NOW, "10.0.0.5")
    assert (status["phase"], status["reason"], status["message"]) == (
        "Pending", "CreateContainerConfigError", 'secret "s" not found')


# ------------------------------------------------------------------------------------------------------------- node
def test_node_and_its_status_from_a_node_file_entry():
    template = {"metadata": {"name": "gpu-1", "labels": {"fedtask.io/device": "true"}},
                "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}], "podCIDR": "ignored"},
                "status": {"capacity": {"cpu": 4, "memory": "8Gi", "nvidia.com/gpu": 1},
                           "allocatable": {"cpu": "3500m", "memory": "7Gi", "nvidia.com/gpu": 1}}}
    node = build_node(template)
    assert node["metadata"]["labels"]["fedtask.io/device"] == "true"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-1"
    assert node["spec"] == {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}
    status = build_node_status(template, NOW, "2026-01-01T00:00:00Z", "fedtask-node-agent/0", "10.0.0.5")
    assert status["capacity"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1", "pods": "110"}
    assert status["allocatable"] == {"cpu": "3500m", "memory": "7Gi", "nvidia.com/gpu": "1", "pods": "110"}
    ready = [c for c in status["conditions"] if c["type"] == "Ready"][0]
    assert (ready["status"], ready["lastHeartbeatTime"]) == ("True", NOW)
    assert {"type": "InternalIP", "address": "10.0.0.5"} in status["addresses"]


# ----------------------------------------------------------------------------------------------------------- probes
@pytest.fixture
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probes_against_real_endpoints(http_server):
    container = {"ports": [{"name": "health", "containerPort": http_server}]}
    assert run_probe({"httpGet": {"path": "/healthz", "port": "health"}}, container) == (True, "")
    ok, message = run_probe({"httpGet": {"path": "/other", "port": http_server}}, container)
    assert not ok and "statuscode: 503" in message
    assert run_probe({"tcpSocket": {"port": http_server}}, container) == (True, "")
    assert not run_probe({"tcpSocket": {"port": closed_port()}}, container)[0]
    assert run_probe({"exec": {"command": ["true"]}}, container) == (True, "")
    ok, message = run_probe({"httpGet": {"path": "/", "port": "nope"}}, container)
    assert not ok and "not a number nor a named port" in message
    assert not run_probe({"grpc": {"port": 1}}, container)[0]


def test_probe_thresholds():
    probes = new_probes({"readinessProbe": {"periodSeconds": 1, "failureThreshold": 2, "successThreshold": 2,
                                            "initialDelaySeconds": 5},
                         "livenessProbe": {"periodSeconds": 1, "failureThreshold": 2}}, now=100.0)
    readiness, liveness = probes["readiness"], probes["liveness"]
    assert not readiness.due(104.9) and readiness.due(105.0)
    assert (readiness.passing, liveness.passing) == (False, True)
    assert readiness.record(True, "", 105) is False  # one success of the two needed
    assert readiness.record(True, "", 106) is True and readiness.passing
    assert readiness.record(False, "x", 107) is False and readiness.record(False, "x", 108) is True
    assert not readiness.passing and readiness.next_run == 109
    assert liveness.record(False, "down", 1) is False and liveness.record(False, "down", 2) is True
    assert not liveness.passing and liveness.message == "down"
    assert isinstance(readiness, ProbeState)


# ---------------------------------------------------------------------------------------------------------- hosts
def test_hosts_file_maps_every_service_name():
    services = [{"metadata": {"name": "fedtask-minio", "namespace": "fedtask"},
                 "spec": {"ports": [{"port": 9000, "targetPort": "s3"}]}},
                {"metadata": {"name": "kubernetes", "namespace": "default"},
                 "spec": {"ports": [{"port": 443, "targetPort": 6443}]}}]
    text = render_hosts("127.0.0.1 localhost\n", services, "10.0.0.5", "127.0.0.1")
    assert text.splitlines() == [
        "127.0.0.1 localhost", "# Services (fedtask node agent)",
        "127.0.0.1 kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local",
        "10.0.0.5 fedtask-minio.fedtask fedtask-minio.fedtask.svc fedtask-minio.fedtask.svc.cluster.local"]
    assert mismatched_ports(services[0]) == [] and mismatched_ports(services[1]) == ["443->6443"]
