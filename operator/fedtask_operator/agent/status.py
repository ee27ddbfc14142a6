"""Pod and Node status as a kubelet reports them (pure functions over plain dicts).

`build_pod_status` turns what the process kubelet observed (its PodStatus dict: phase and one container state) plus
what the agent tracks (restarts, readiness, a waiting reason) into the status a kubelet writes through `pods/status`:
phase, conditions, hostIP/podIP, startTime and containerStatuses with state, lastState, ready, started,
restartCount, exit code, reason and termination message.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

from fedtask_operator.core.naming import HOSTNAME_LABEL
from fedtask_operator.core.phases import POD_FINISHED_PHASES, POD_PENDING, POD_RUNNING

CONDITION_TYPES = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")  # the kubelet's own


@dataclass
class ContainerRecord:
    """What the agent knows about a pod's container beyond the process kubelet's current state."""

    acknowledged: str = ""  # when the agent took the pod on (the pod's startTime)
    restart_count: int = 0
    last_terminated: dict | None = None
    ready: bool = False
    waiting: tuple[str, str] | None = None  # (reason, message): the container is not running and why
    first_start: str | None = None
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, since)


def container_state(local_status: dict) -> dict:
    statuses = local_status.get("containerStatuses") or [{}]
    return statuses[0].get("state") or {}


def build_pod_status(pod: dict, local_status: dict | None, record: ContainerRecord, now: str, node_ip: str,
                     restarting: bool = False, container_id: str = "") -> dict:
    """The pod's status. local_status None: not started (record.waiting says why). restarting: the container ended
    and will be started again (restartPolicy), so the pod stays Running with the end as lastState."""
    container = pod["spec"]["containers"][0]
    state = container_state(local_status or {})
    started_at = (state.get("running") or state.get("terminated") or {}).get("startedAt")
    if started_at and record.first_start is None:
        record.first_start = started_at
    if local_status is None or record.waiting is not None or restarting:
        reason, message = record.waiting or ("ContainerCreating", "")
        state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    phase = _phase(local_status, record, restarting)
    running = "running" in state
    ready = running and record.ready
    status_entry = {
        "name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": ready,
        "started": running, "restartCount": record.restart_count,
        "state": state, "lastState": {"terminated": record.last_terminated} if record.last_terminated else {},
    }
    if container_id:
        status_entry["containerID"] = container_id
    conditions = {
        "PodReadyToStartContainers": local_status is not None or record.first_start is not None,
        "Initialized": True,
        "ContainersReady": ready,
        "Ready": ready,
    }
    status = {
        "phase": phase,
        "conditions": [*[dict(c) for c in (pod.get("status") or {}).get("conditions") or []
                         if c.get("type") not in CONDITION_TYPES],  # the scheduler's PodScheduled, and others'
                       *[_condition(kind, conditions[kind], record, now, phase) for kind in CONDITION_TYPES]],
        "hostIP": node_ip, "hostIPs": [{"ip": node_ip}],
        "podIP": node_ip, "podIPs": [{"ip": node_ip}],  # like a hostNetwork pod
        "startTime": record.acknowledged or record.first_start or now,
        "containerStatuses": [status_entry],
    }
    message = (state.get("waiting") or {}).get("message")
    if phase == POD_PENDING and message:
        status["message"] = message
        status["reason"] = state["waiting"]["reason"]
    return status


def _phase(local_status: dict | None, record: ContainerRecord, restarting: bool) -> str:
    if local_status is None:
        return POD_RUNNING if record.restart_count else POD_PENDING
    if restarting:
        return POD_RUNNING
    phase = local_status.get("phase", POD_PENDING)
    return phase


def _condition(kind: str, value: bool, record: ContainerRecord, now: str, phase: str) -> dict:
    text = "True" if value else "False"
    previous = record.transitions.get(kind)
    if previous is None or previous[0] != text:
        record.transitions[kind] = (text, now)
    condition = {"type": kind, "status": text, "lastProbeTime": None,
                 "lastTransitionTime": record.transitions[kind][1]}
    if not value and kind in ("Ready", "ContainersReady"):
        condition["reason"] = "PodCompleted" if phase in POD_FINISHED_PHASES else "ContainersNotReady"
    return condition


def build_node(template: dict) -> dict:
    """The Node object to register, from a node-file entry (`kubectl get nodes -o yaml` item): name, labels,
    annotations, taints, unschedulable; the kubelet's own labels added."""
    meta = template.get("metadata") or {}
    name = meta["name"]
    labels = {HOSTNAME_LABEL: name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": _arch(), **(meta.get("labels") or {})}
    spec = {key: value for key, value in (template.get("spec") or {}).items() if key in ("taints", "unschedulable")}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         **({"annotations": meta["annotations"]} if meta.get("annotations") else {})},
            "spec": spec}


def build_node_status(template: dict, now: str, since: str, version: str, node_ip: str) -> dict:
    """Capacity/allocatable from the node file (pods defaults to 110), Ready and no pressure, addresses, info."""
    status = template.get("status") or {}
    capacity = {str(k): str(v) for k, v in (status.get("capacity") or status.get("allocatable") or {}).items()}
    capacity.setdefault("pods", "110")
    allocatable = {str(k): str(v) for k, v in (status.get("allocatable") or capacity).items()}
    allocatable.setdefault("pods", capacity["pods"])
    name = template["metadata"]["name"]

    def condition(kind: str, value: str, reason: str, message: str) -> dict:
        return {"type": kind, "status": value, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": since}

    uname = platform.uname()
    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent: no memory pressure"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent: no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "node agent: no PID pressure"),
            condition("Ready", "True", "KubeletReady", "fedtask node agent is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": uname.release,
                     "osImage": uname.system, "containerRuntimeVersion": "process://fedtask-node-agent",
                     "kubeletVersion": version, "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": _arch()},
    }


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
