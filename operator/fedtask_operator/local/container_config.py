"""A container's configuration as the process kubelet resolves it (pure: the kubelet does the file work).

- the environment: `env` values with `$(VAR)` expansion, `secretKeyRef`/`configMapKeyRef`/`fieldRef` sources, and
  `envFrom`;
- volume mounts: the local folder behind each mount and what makes it ready (create it, write a secret's files, or
  require a hostPath to exist);
- the command line: `command` + `args` expanded, mount paths rewritten to their folders, `python` as this interpreter.

`secrets` and `config_maps` are stores keyed by "namespace/name" or "name" (anything with `.get`), values
{key: value}. A pod that cannot start raises PodConfigError with the reason a kubelet reports.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"


class PodConfigError(Exception):
    """The pod cannot start (missing secret, unsupported volume): the pod fails with this reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------------- environment
def container_env(pod: dict, container: dict, secrets, config_maps) -> dict[str, str]:
    """The variables the pod's manifest gives the container (`envFrom` first, then `env` in order)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, store in (("secretRef", secrets), ("configMapRef", config_maps)):
            ref = source.get(kind)
            if ref is None:
                continue
            data = lookup(store, pod, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                what = "secret" if kind == "secretRef" else "configmap"
                raise PodConfigError("CreateContainerConfigError", f'{what} "{ref["name"]}" not found')
            env.update({prefix + k: str(v) for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand_vars(str(item["value"]), env)
            continue
        value = env_from_source(pod, name, item.get("valueFrom") or {}, secrets, config_maps)
        if value is not None:
            env[name] = value
    return env


def env_from_source(pod: dict, name: str, source: dict, secrets, config_maps) -> str | None:
    """The value of one `valueFrom`; None when an optional reference is missing."""
    for kind, store, what in (("secretKeyRef", secrets, "secret"), ("configMapKeyRef", config_maps, "configmap")):
        ref = source.get(kind)
        if ref is None:
            continue
        data = lookup(store, pod, ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            if data is None:
                message = f'{what} "{ref["name"]}" not found'
            else:
                message = f'couldn\'t find key {ref["key"]} in {what} "{ref["name"]}"'
            raise PodConfigError("CreateContainerConfigError", f"env {name}: {message}")
        return str(data[ref["key"]])
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        meta = pod.get("metadata", {})
        values = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace") or "default",
                  "metadata.uid": meta.get("uid"), "spec.nodeName": pod.get("spec", {}).get("nodeName"),
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if label:
            return str(meta.get(label.group(1), {}).get(label.group(2), ""))
        return str(values.get(path) or "")
    if "resourceFieldRef" in source:
        return ""
    raise PodConfigError("CreateContainerConfigError", f"env {name}: unsupported valueFrom {sorted(source)}")


def lookup(store, pod: dict, name: str) -> dict | None:
    """A secret or config map the pod refers to: "namespace/name" first, then the bare name."""
    namespace = pod.get("metadata", {}).get("namespace") or "default"
    found = store.get(f"{namespace}/{name}")
    return found if found is not None else store.get(name)


def expand_vars(value: str, env: dict) -> str:
    """Kubernetes `$(VAR)` expansion: known variables are replaced, `$$(VAR)` escapes, unknown ones stay."""
    def replace(match: re.Match) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return match.group(0)[1:]
        return env.get(name, match.group(0))

    return re.sub(r"(\$)?\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)", replace, value)


# -------------------------------------------------------------------------------------------------------- volumes
# A PersistentVolumeClaim's name (a DNS subdomain): never absolute, never `.` or `..`.
CLAIM_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class VolumePlaces:
    """Where volumes live on this machine."""

    pod_dir: Path  # emptyDir, secret and configMap volumes go to pod_dir/volumes/<volume>
    claims_root: Path  # PersistentVolumeClaim `c` is the folder claims_root/c
    host_path_root: Path | None = None  # None maps a hostPath to itself; a folder maps `/x/y` to host_path_root/x/y


@dataclass(frozen=True)
class Mount:
    """One volume mount: the local folder behind it and what makes that folder ready."""

    path: str  # the mountPath, without a trailing slash
    volume: str
    folder: Path  # the volume's folder
    sub_path: str = ""
    create: bool = True  # create the folder when missing
    must_exist: bool = False  # a hostPath of type Directory or File: the pod fails when it is missing
    files: tuple[tuple[str, str], ...] = ()  # (name, content) written into the folder: a secret's or config map's

    @property
    def local_path(self) -> Path:
        return self.folder / self.sub_path if self.sub_path else self.folder


def pod_volumes(pod: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod.get("spec", {}).get("volumes") or []}


def resolve_mount(mount: dict, volumes: dict[str, dict], pod: dict, places: VolumePlaces, secrets,
                  config_maps) -> Mount:
    """Where one of the container's `volumeMounts` lives (see `pod_volumes`)."""
    volume = volumes.get(mount["name"])
    if volume is None:
        raise PodConfigError("CreateContainerConfigError", f'volume "{mount["name"]}" is not defined')
    name = volume["name"]
    sub_path = mount.get("subPath") or ""
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        raise PodConfigError("CreateContainerConfigError",
                             f'volume "{name}": subPath {sub_path!r} must be relative and without ".." segments')
    common = {"path": mount["mountPath"].rstrip("/") or "/", "volume": name, "sub_path": sub_path}
    if "hostPath" in volume:
        raw = str(volume["hostPath"].get("path") or "")
        if not raw.startswith("/") or ".." in raw.split("/"):  # Kubernetes refuses these too; `/x/../..` left the root
            raise PodConfigError("FailedMount", f'volume "{name}": hostPath {raw!r} must be an absolute path without '
                                                '".." segments')
        path = Path(raw)
        folder = places.host_path_root / path.relative_to(path.anchor) if places.host_path_root else path
        kind = volume["hostPath"].get("type", "")
        return Mount(folder=folder, create=kind in ("", "DirectoryOrCreate"), must_exist=kind in ("Directory", "File"),
                     **common)
    if "emptyDir" in volume:
        return Mount(folder=places.pod_dir / "volumes" / name, **common)
    if "persistentVolumeClaim" in volume:
        claim = str(volume["persistentVolumeClaim"].get("claimName") or "")
        if not CLAIM_NAME.fullmatch(claim) or len(claim) > 253:  # an absolute or `..` name left the claims folder
            raise PodConfigError("FailedMount", f'volume "{name}": claimName {claim!r} is not a claim name (lower-case '
                                                "letters, digits, '-' and '.', at most 253 characters)")
        return Mount(folder=places.claims_root / claim, **common)
    for kind, store, what in (("secret", secrets, "secret"), ("configMap", config_maps, "configmap")):
        if kind in volume:
            ref_name = volume[kind].get("secretName") or volume[kind].get("name")
            data = lookup(store, pod, ref_name)
            if data is None:
                if not volume[kind].get("optional"):
                    raise PodConfigError("FailedMount", f'volume "{name}": {what} "{ref_name}" not found')
                data = {}
            return Mount(folder=places.pod_dir / "volumes" / name,
                         files=tuple((key, str(value)) for key, value in data.items()), **common)
    raise PodConfigError("FailedMount", f'volume "{name}": unsupported volume type {sorted(set(volume) - {"name"})}')


# --------------------------------------------------------------------------------------------------- command line
@dataclass(frozen=True)
class LocalCommand:
    argv: list[str]
    env: dict[str, str]  # the pod's variables (the process's base environment goes below them)
    cwd: str


def local_command(container: dict, env: dict[str, str], mounts: dict[str, str], result_path: Path,
                  pod_dir: Path) -> LocalCommand:
    """The container's command as a local process: `$(VAR)` expanded, every mount path (and the termination message
    path) rewritten to its local folder (`mounts`: mountPath -> folder); a `/tmp` mount becomes TMPDIR instead."""
    env = dict(env)
    result_mount = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    rewrites = {result_mount: str(result_path)}
    for mount_path, folder in mounts.items():
        if mount_path == "/tmp":
            env["TMPDIR"] = folder  # rewriting "/tmp" inside args would also hit real paths under /tmp
        elif mount_path != folder:
            rewrites[mount_path] = folder
    argv = [expand_vars(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]
    if not argv:
        raise PodConfigError("Unsupported", "the container has no command (the process kubelet has no images)")
    argv = [rewrite_paths(a, rewrites) for a in argv]
    env = {k: rewrite_paths(v, rewrites) for k, v in env.items()}
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    cwd = container.get("workingDir")
    return LocalCommand(argv=argv, env=env, cwd=rewrite_paths(cwd, rewrites) if cwd else str(pod_dir))


def rewrite_paths(value: str, rewrites: dict[str, str]) -> str:
    """Replace each mount path (as a whole path prefix) with its local folder."""
    for mount_path, folder in sorted(rewrites.items(), key=lambda item: -len(item[0])):
        value = re.sub(rf"(?<![\w.\-/]){re.escape(mount_path)}(?=/|$|[\s\"',:;=])", lambda _: folder, value)
    return value
