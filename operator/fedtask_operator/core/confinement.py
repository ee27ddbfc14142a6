"""What a task may ask of the nodes it runs on (pure): host paths, tolerations, priority classes, service accounts,
runtime classes and schedulers.

The operator builds pods on a task author's behalf, so every field that reaches a node through those pods is a
confused-deputy risk (issue 12): a `hostPath` of `/` mounts the node's root, a toleration `{operator: Exists}` with
no key tolerates every taint (control-plane and dedicated nodes included), `priorityClassName:
system-node-critical` evicts other tenants' pods, a `serviceAccountName` gives the task's code that account's
token, a `runtimeClassName` picks the node's container runtime handler (a weaker sandbox, device access such as
nvidia's, and the RuntimeClass's own scheduling tolerations, which admission adds to the pod past the toleration
allowlist), and a `schedulerName` hands the pods to another scheduler, which may ignore taints and quotas (the kubelet
does not enforce NoSchedule taints). The operator's settings (`Confinement`, from `--allowed-host-path-prefix`,
`--allowed-toleration-key`, `--allowed-priority-class`, `--allowed-service-account`, `--allowed-runtime-class`,
`--allowed-scheduler-name`, or the chart's `operator.confinement` values) say what is
allowed; `confinement_errors` lists every field of a task outside them, and the planner fails that task with
InvalidSpec naming each field. Host paths are also confined by construction: pods mount only
`<hostPath>/<namespace>/<task>` (`confined_host_path`), never the directory itself.

Other code that puts tolerations or a priority class on a pod (spec.server, spec.podTemplate) checks them with
`toleration_errors` / `priority_class_errors`, so one policy covers every pod the operator creates.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .schema import FieldError

DEFAULT_HOST_PATH_PREFIXES = ("/var/lib/fedtask",)
ANY = "*"  # in allowed_toleration_keys: every toleration, the key-less wildcard too
# Toleration keys refused while no allowlist is set: tolerating them puts a tenant's pod on the control plane.
CONTROL_PLANE_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
# The cluster's own scheduler: what a pod without schedulerName gets, so naming it is always allowed.
DEFAULT_SCHEDULER = "default-scheduler"


class ConfinementSettingError(ValueError):
    """An operator setting that cannot be used (the message names the flag)."""


@dataclass(frozen=True)
class Confinement:
    """The operator's limits on what tasks may ask of nodes. The defaults are the safe ones."""

    # hostPath data and publish directories must lie under one of these (absolute, normalised) prefixes.
    allowed_host_path_prefixes: tuple[str, ...] = DEFAULT_HOST_PATH_PREFIXES
    # None: every toleration with a key except the control-plane ones; a tuple: only tolerations of these keys
    # ("*" admits every toleration, including the key-less `operator: Exists` that tolerates every taint).
    allowed_toleration_keys: tuple[str, ...] | None = None
    # priorityClassName values a task may use; empty: none (the pods get the cluster's default priority).
    allowed_priority_classes: tuple[str, ...] = ()
    # serviceAccountName values a task may use (in its own namespace); empty: none (the namespace's default).
    allowed_service_accounts: tuple[str, ...] = ()
    # podTemplate.runtimeClassName values a task may use; empty: none (the node's default runtime handler).
    allowed_runtime_classes: tuple[str, ...] = ()
    # podTemplate.schedulerName values a task may use besides the cluster's default-scheduler, always allowed.
    allowed_scheduler_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for prefix in self.allowed_host_path_prefixes:
            if prefix != "/" and _normalised(prefix) is None:
                raise ConfinementSettingError(
                    f"--allowed-host-path-prefix {prefix!r}: must be an absolute path without '..', '.' or '//' "
                    "segments, such as /var/lib/fedtask")


def _normalised(path: str) -> str | None:
    """The path without a trailing slash; None when it has '.', '..' or empty segments (it could point elsewhere)."""
    if not path.startswith("/"):
        return None
    parts = path.rstrip("/").split("/")[1:]
    if any(part in ("", ".", "..") for part in parts):
        return None
    return "/" + "/".join(parts)


def host_path_errors(path: str, field_path: str, confinement: Confinement) -> list[FieldError]:
    normal = _normalised(path)
    if normal is None:
        return [FieldError(field_path, f"{path!r} must be an absolute path without '.', '..' or empty segments")]
    prefixes = confinement.allowed_host_path_prefixes
    if not any(normal == p.rstrip("/") or normal.startswith(p.rstrip("/") + "/") or p == "/" for p in prefixes):
        allowed = ", ".join(prefixes) if prefixes else "none (hostPath is disabled)"
        return [FieldError(field_path, f"{path!r} is outside the operator's allowed host path prefixes ({allowed}); "
                                       "ask the cluster admin (operator flag --allowed-host-path-prefix)")]
    return []


def confined_host_path(path: str, namespace: str, task: str) -> str:
    """The only directory of `path` a task's pods mount: `<path>/<namespace>/<task>`."""
    return f"{path.rstrip('/')}/{namespace}/{task}"


def toleration_errors(tolerations: Sequence[Mapping[str, Any]], field_path: str,
                      confinement: Confinement) -> list[FieldError]:
    """Tolerations (as JSON: key, operator, value, effect) outside the operator's allowlist."""
    allowed = confinement.allowed_toleration_keys
    errors = []
    for i, toleration in enumerate(tolerations):
        key = str(toleration.get("key") or "")
        at = f"{field_path}[{i}]"
        if allowed is not None and ANY in allowed:
            continue
        if not key:
            errors.append(FieldError(at, "a toleration without a key tolerates every taint; the operator allows it "
                                         "only with --allowed-toleration-key '*'"))
        elif allowed is None and key in CONTROL_PLANE_KEYS:
            errors.append(FieldError(f"{at}.key", f"{key!r} would put the task's pods on the control plane; the "
                                                  "operator allows it only when --allowed-toleration-key lists it"))
        elif allowed is not None and key not in allowed:
            errors.append(FieldError(f"{at}.key", f"{key!r} is not among the operator's allowed toleration keys "
                                                  f"({', '.join(allowed) or 'none'})"))
    return errors


def _listed_name_errors(name: str, field_path: str, allowed: tuple[str, ...], what: str, flag: str,
                        always_allowed: tuple[str, ...] = ()) -> list[FieldError]:
    """A name the task may use only when the operator lists it (or it is one of `always_allowed`)."""
    if not name or name in always_allowed or name in allowed:
        return []
    listed = ", ".join((*always_allowed, *allowed)) or "none"
    return [FieldError(field_path, f"{name!r} is not among the operator's allowed {what} ({listed}); "
                                   f"ask the cluster admin (operator flag {flag})")]


def priority_class_errors(name: str, field_path: str, confinement: Confinement) -> list[FieldError]:
    return _listed_name_errors(name, field_path, confinement.allowed_priority_classes, "priority classes",
                               "--allowed-priority-class")


def service_account_errors(name: str, field_path: str, confinement: Confinement) -> list[FieldError]:
    return _listed_name_errors(name, field_path, confinement.allowed_service_accounts, "service accounts",
                               "--allowed-service-account")


def runtime_class_errors(name: str, field_path: str, confinement: Confinement) -> list[FieldError]:
    return _listed_name_errors(name, field_path, confinement.allowed_runtime_classes, "runtime classes",
                               "--allowed-runtime-class")


def scheduler_name_errors(name: str, field_path: str, confinement: Confinement) -> list[FieldError]:
    return _listed_name_errors(name, field_path, confinement.allowed_scheduler_names, "scheduler names",
                               "--allowed-scheduler-name", always_allowed=(DEFAULT_SCHEDULER,))


def _encoded_tolerations(tolerations: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [t if isinstance(t, Mapping) else {"key": getattr(t, "key", ""), "operator": getattr(t, "operator", "")}
            for t in tolerations]


def confinement_errors(spec: Any, confinement: Confinement) -> list[FieldError]:
    """Every field of a task's spec (a core.spec.TaskSpec) outside the operator's confinement."""
    errors = []
    if spec.data.source == "hostPath":
        errors += host_path_errors(spec.data.host_path, "spec.data.hostPath", confinement)
    if spec.publish.to_devices:
        errors += host_path_errors(spec.publish.host_path, "spec.publish.hostPath", confinement)
    errors += toleration_errors(_encoded_tolerations(spec.devices.tolerations), "spec.devices.tolerations",
                                confinement)
    server = getattr(spec, "server", None)  # spec.server (issue 15): the server-side pods' own tolerations
    if server is not None:
        errors += toleration_errors(_encoded_tolerations(getattr(server, "tolerations", ()) or ()),
                                    "spec.server.tolerations", confinement)
    errors += priority_class_errors(spec.priority_class_name, "spec.priorityClassName", confinement)
    errors += service_account_errors(spec.service_account_name, "spec.serviceAccountName", confinement)
    template = spec.pod_template
    errors += runtime_class_errors(template.runtime_class_name, "spec.podTemplate.runtimeClassName", confinement)
    errors += scheduler_name_errors(template.scheduler_name, "spec.podTemplate.schedulerName", confinement)
    return errors
