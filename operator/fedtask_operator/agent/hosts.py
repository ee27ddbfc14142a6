"""Service names for pods that share this machine's network: a hosts file mapping every Service
(`<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`) to the pods' address.

There is no cluster DNS and no kube-proxy: a pod reaches a Service's backend on the port the backend listens on, so a
Service works when its `port` equals its `targetPort` (the process listens on the host network). The node agent
bind-mounts this file onto /etc/hosts in its own mount namespace, so its pods (and the fork server's workers) resolve
the names with the C library as they would through cluster DNS. Services whose ports differ are logged.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from fedtask_operator.agent.node_api import ApiError, NodeApi

log = logging.getLogger("fedtask.agent")
CLUSTER_DOMAIN = "cluster.local"


def service_names(service: dict) -> list[str]:
    meta = service["metadata"]
    base = f"{meta['name']}.{meta['namespace']}"
    return [base, f"{base}.svc", f"{base}.svc.{CLUSTER_DOMAIN}"]


def mismatched_ports(service: dict) -> list[str]:
    """Ports of the Service that a process on the host network cannot serve under the Service's port."""
    out = []
    for port in (service.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, int) and target != port.get("port"):
            out.append(f"{port.get('port')}->{target}")
    return out


API_SERVICE = "default/kubernetes"  # the API server's own Service: its address is the one pods get in their env


def render_hosts(base: str, services: list[dict], address: str, api_address: str) -> str:
    lines = [base.rstrip("\n"), "# Services (fedtask node agent)"]
    for service in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        key = f"{service['metadata']['namespace']}/{service['metadata']['name']}"
        lines.append(f"{api_address if key == API_SERVICE else address} {' '.join(service_names(service))}")
    return "\n".join(lines) + "\n"


class HostsFile:
    """Keeps `path` in step with the cluster's Services (a watch); writes in place, so a bind mount of the file
    (which pins its inode) sees every update."""

    def __init__(self, api: NodeApi, path: Path, base: str, address: str, api_address: str):
        self.api = api
        self.path = Path(path)
        self.base = base
        self.address = address
        self.api_address = api_address
        self.services: dict[str, dict] = {}
        self.warned: set[str] = set()
        self.stopping = threading.Event()

    def write(self) -> None:
        content = render_hosts(self.base, list(self.services.values()), self.address, self.api_address)
        with open(self.path, "a+") as handle:  # same inode: truncate and rewrite
            handle.seek(0)
            if handle.read() == content:
                return
            handle.seek(0)
            handle.truncate()
            handle.write(content)

    def _update(self, kind: str, service: dict) -> None:
        key = f"{service['metadata']['namespace']}/{service['metadata']['name']}"
        if kind == "DELETED":
            self.services.pop(key, None)
            return
        self.services[key] = service
        ports = mismatched_ports(service)
        if ports and key not in self.warned and key != API_SERVICE:
            self.warned.add(key)
            log.warning("service %s maps ports %s: pods on the host network only reach it on the target port",
                        key, ", ".join(ports))

    def sync(self) -> str:
        services, version = self.api.list_services()
        self.services = {}
        for service in services:
            self._update("ADDED", service)
        self.write()
        return version

    def run(self) -> None:
        version = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    version = self.sync()
                for event in self.api.watch_services(version, 290):
                    version = event["object"]["metadata"].get("resourceVersion") or version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._update(event["type"], event["object"])
                        self.write()
                    if self.stopping.is_set():
                        return
            except ApiError as err:
                if err.status != 410:
                    log.warning("service watch: %s", err)
                    self.stopping.wait(1.0)
                version = None
            except Exception as err:
                log.warning("service watch: %r", err)
                self.stopping.wait(1.0)
                version = None
