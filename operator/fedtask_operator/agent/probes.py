"""Readiness and liveness probes (httpGet, tcpSocket, exec) against the pod's address, as a kubelet runs them:
after initialDelaySeconds, every periodSeconds, each within timeoutSeconds; successThreshold successes in a row
make a failing probe pass, failureThreshold failures in a row make a passing one fail. gRPC probes and startup
probes are not run (a startup probe is treated as passed).
"""
from __future__ import annotations

import http.client
import socket
import subprocess
import time
from dataclasses import dataclass, field


def resolve_port(port, container: dict) -> int:
    """A probe's port: a number or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"port {port!r} is not a number nor a named port of the container")


def run_probe(probe: dict, container: dict, host: str = "127.0.0.1") -> tuple[bool, str]:
    """(success, message) of one probe run."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            action = probe["httpGet"]
            port = resolve_port(action["port"], container)
            scheme = (action.get("scheme") or "HTTP").upper()
            cls = http.client.HTTPSConnection if scheme == "HTTPS" else http.client.HTTPConnection
            kwargs = {}
            if scheme == "HTTPS":
                import ssl

                kwargs["context"] = ssl._create_unverified_context()  # kubelets do not verify probe certificates
            connection = cls(action.get("host") or host, port, timeout=timeout, **kwargs)
            try:
                headers = {item["name"]: item["value"] for item in action.get("httpHeaders") or []}
                headers.setdefault("User-Agent", "kube-probe/fedtask-node-agent")
                connection.request("GET", action.get("path") or "/", headers=headers)
                response = connection.getresponse()
                response.read(1024)
            finally:
                connection.close()
            if 200 <= response.status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {response.status}"
        if "tcpSocket" in probe:
            action = probe["tcpSocket"]
            port = resolve_port(action["port"], container)
            with socket.create_connection((action.get("host") or host, port), timeout=timeout):
                return True, ""
        if "exec" in probe:
            result = subprocess.run(probe["exec"]["command"], stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=timeout)
            if result.returncode == 0:
                return True, ""
            return False, f"exec probe exited with {result.returncode}: {result.stdout[-200:]!r}"
        return False, f"probe type {sorted(probe)} is not supported by the node agent"
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException) as err:
        return False, f"probe failed: {err}"


@dataclass
class ProbeState:
    """One probe of one running container."""

    probe: dict
    started: float  # monotonic time the container started
    passing: bool  # readiness starts failing, liveness passing
    successes: int = 0
    failures: int = 0
    next_run: float = 0.0
    message: str = ""
    runs: int = field(default=0)

    def __post_init__(self) -> None:
        self.next_run = self.started + float(self.probe.get("initialDelaySeconds") or 0)

    def due(self, now: float) -> bool:
        return now >= self.next_run

    def record(self, success: bool, message: str, now: float) -> bool:
        """Count a result; return whether `passing` changed."""
        self.runs += 1
        self.next_run = now + float(self.probe.get("periodSeconds") or 10)
        self.message = message
        if success:
            self.successes, self.failures = self.successes + 1, 0
            if not self.passing and self.successes >= int(self.probe.get("successThreshold") or 1):
                self.passing = True
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.passing and self.failures >= int(self.probe.get("failureThreshold") or 3):
                self.passing = False
                return True
        return False


def new_probes(container: dict, now: float | None = None) -> dict[str, ProbeState]:
    """The container's readiness and liveness probes, fresh for a container that just started."""
    now = time.monotonic() if now is None else now
    probes = {}
    if container.get("readinessProbe"):
        probes["readiness"] = ProbeState(container["readinessProbe"], now, passing=False)
    if container.get("livenessProbe"):
        probes["liveness"] = ProbeState(container["livenessProbe"], now, passing=True)
    return probes
