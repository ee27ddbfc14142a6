"""A process kubelet: runs Pod manifests as local processes.

`ProcessKubelet.run_pod(pod)` starts the pod's (single) container as a process in its own session and process
group, with its command, args and env (values, `secretKeyRef`/`configMapKeyRef`/`fieldRef`, `envFrom`), volumes mapped
to folders and `terminationMessagePath` mapped to a per-pod result file. `poll()` returns the pods whose status
changed, as Kubernetes `PodStatus` dicts (phase Pending -> Running -> Succeeded/Failed, container state with exit code
and the termination message). `delete_pod()` kills the pod's process group.

Everything a pod leaves behind lives in `root/<namespace>/<name>/`: `pod.json` (the manifest), `process.json` (pid and
the process start time, to recognise it after a restart), `exit.json` (exit code, written by whoever sees the process
end: the process wrapper itself, the fork server or this kubelet), `termination-log` and `log`. So a new kubelet on the
same root adopts pods that are still running (`run_pod` with the same uid) or that finished while nobody watched.

The kubelet knows nothing about FederatedTasks or the local store; the API-emulator tests drive it too.
"""
from __future__ import annotations

import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from fedtask_operator.core.phases import POD_FAILED, POD_FINISHED_PHASES, POD_PENDING, POD_RUNNING, POD_SUCCEEDED

TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
LOG_TAIL_LINES = 80
# A container whose process vanished without recording an exit code (killed while nobody watched).
LOST_EXIT_CODE = 137
LAUNCHER_EXIT_GRACE_SECONDS = 1.0
NOTIFY_SOCKET_NAME = ".notify"
NOTIFY_ENV = "FEDTASK_KUBELET_NOTIFY"  # the fork server's children ping this datagram socket when they end

StatusCallback = Callable[[dict, dict], None]


class Launcher(Protocol):
    """Starts some commands faster than a fresh process (the fork server)."""

    def handles(self, argv: list[str]) -> bool: ...

    def spawn(self, argv: list[str], env: dict, cwd: str, log_path: str, exit_path: str) -> int: ...


class PodConfigError(Exception):
    """The pod cannot start (missing secret, unsupported volume): the pod fails with this reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: dict) -> str:
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """The process start time (clock ticks since boot), or None when no such process is running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has finished
        return None
    return int(fields[19])


@dataclass
class PodProcess:
    key: str
    pod: dict
    dir: Path
    status: dict
    pid: int | None = None
    start_ticks: int | None = None
    popen: subprocess.Popen | None = None
    reported: str = ""  # the status last returned by poll(), serialised
    launched: bool = False  # started by the launcher (the fork server), which records the exit of killed children
    gone_since: float | None = None  # when the process was first seen gone without an exit record

    @property
    def exit_path(self) -> Path:
        return self.dir / "exit.json"

    @property
    def result_path(self) -> Path:
        return self.dir / "termination-log"

    @property
    def log_path(self) -> Path:
        return self.dir / "log"


class ProcessKubelet:
    """Runs Pod manifests as local processes; see the module docstring.

    root:          where per-pod folders live (`root/<namespace>/<name>/`).
    secrets:       {"name" or "namespace/name": {key: value}} for `secretKeyRef`, `envFrom.secretRef`, secret volumes.
    config_maps:   the same for config maps.
    host_path_root: None maps a hostPath volume to the same path; a folder maps `/x/y` to `host_path_root/x/y`.
    claims_root:   PersistentVolumeClaim `c` is the folder `claims_root/c` (default `root/claims`).
    launcher:      an optional fast launcher (the fork server) for the commands it handles.
    on_status:     called as on_status(pod, status) whenever poll() sees a pod's status change.
    base_env:      the environment every process starts from (default: this process's), pod env on top.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        secrets: dict | None = None,
        config_maps: dict | None = None,
        host_path_root: str | os.PathLike | None = None,
        claims_root: str | os.PathLike | None = None,
        launcher: Launcher | None = None,
        on_status: StatusCallback | None = None,
        base_env: dict | None = None,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.secrets = secrets or {}
        self.config_maps = config_maps or {}
        self.host_path_root = Path(host_path_root) if host_path_root else None
        self.claims_root = Path(claims_root) if claims_root else self.root / "claims"
        self.launcher = launcher
        self.on_status = on_status
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.pods: dict[str, PodProcess] = {}
        self.notify_socket = self._bind_notify_socket()

    # ----------------------------------------------------------------------------------------------------- lifecycle
    def run_pod(self, pod: dict) -> dict:
        """Start the pod (or adopt it: same uid, left by an earlier kubelet on this root). Idempotent by name."""
        key = pod_key(pod)
        if key in self.pods:
            return self.pods[key].status
        namespace, name = key.split("/", 1)
        proc = PodProcess(key=key, pod=pod, dir=self.root / namespace / name, status={})
        if self._adopt(proc):
            self.pods[key] = proc
            return proc.status
        if proc.dir.exists():
            shutil.rmtree(proc.dir)
        proc.dir.mkdir(parents=True)
        write_json_atomic(proc.dir / "pod.json", pod)
        self.pods[key] = proc
        proc.status = {"phase": POD_PENDING, "conditions": []}
        try:
            self._start(proc)
        except PodConfigError as err:
            self._fail_before_start(proc, err.reason, err.message)
        except OSError as err:
            self._fail_before_start(proc, "StartError", f"cannot start the container: {err}")
        return proc.status

    def delete_pod(self, name_or_key: str, namespace: str = "default") -> bool:
        """Kill the pod's process group and forget the pod. Returns whether the pod was known."""
        key = name_or_key if "/" in name_or_key else f"{namespace}/{name_or_key}"
        proc = self.pods.pop(key, None)
        if proc is None:
            return False
        self._kill(proc)
        return True

    def poll(self) -> list[tuple[dict, dict]]:
        """Refresh every pod's status; return [(pod, status)] for the pods whose status changed since the last poll."""
        changed = []
        for proc in list(self.pods.values()):
            self._refresh(proc)
            serialised = json.dumps(proc.status, sort_keys=True)
            if serialised != proc.reported:
                proc.reported = serialised
                changed.append((proc.pod, proc.status))
                if self.on_status:
                    self.on_status(proc.pod, proc.status)
        return changed

    def status(self, name_or_key: str, namespace: str = "default") -> dict | None:
        key = name_or_key if "/" in name_or_key else f"{namespace}/{name_or_key}"
        proc = self.pods.get(key)
        if proc is None:
            return None
        self._refresh(proc)
        return proc.status

    def running(self) -> list[str]:
        return [key for key, proc in self.pods.items() if proc.status.get("phase") in (POD_PENDING, POD_RUNNING)]

    def wait(self, name_or_key: str, namespace: str = "default", timeout: float = 60.0, interval: float = 0.005):
        """Block until the pod has finished; return its status (tests and simple callers)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name_or_key, namespace)
            if status is None or status.get("phase") in POD_FINISHED_PHASES:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {name_or_key} still {status.get('phase')} after {timeout}s")
            time.sleep(interval)

    def stop_all(self) -> None:
        """Kill every running pod (Ctrl-C) and mark it interrupted, so a later kubelet runs it again from the start
        instead of reporting the kill as the container's failure."""
        for proc in self.pods.values():
            if proc.status.get("phase") in (POD_PENDING, POD_RUNNING):
                (proc.dir / "interrupted").touch()
                self._kill(proc)

    def log(self, name_or_key: str, namespace: str = "default") -> str:
        key = name_or_key if "/" in name_or_key else f"{namespace}/{name_or_key}"
        namespace, name = key.split("/", 1)
        try:
            return (self.root / namespace / name / "log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_change(self, timeout: float) -> None:
        """Sleep up to `timeout` seconds, waking early when a pod started by the fork server finishes."""
        if self.notify_socket is None:
            time.sleep(timeout)
            return
        readable, _, _ = select.select([self.notify_socket], [], [], timeout)
        if readable:
            try:
                while self.notify_socket.recv(64):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self.notify_socket is not None:
            self.notify_socket.close()
            self.notify_socket = None
            try:
                (self.root / NOTIFY_SOCKET_NAME).unlink()
            except OSError:
                pass

    def _bind_notify_socket(self) -> socket.socket | None:
        path = self.root / NOTIFY_SOCKET_NAME
        if len(str(path)) >= 100:  # AF_UNIX paths are short; without the socket, wait_for_change just sleeps
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            path.unlink(missing_ok=True)
            sock.bind(str(path))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    # ------------------------------------------------------------------------------------------------------ starting
    def _start(self, proc: PodProcess) -> None:
        pod = proc.pod
        containers = pod.get("spec", {}).get("containers") or []
        if len(containers) != 1:
            raise PodConfigError("Unsupported", f"the process kubelet runs pods with exactly one container, "
                                                f"got {len(containers)}")
        container = containers[0]
        mounts = self._mount_map(proc, container)
        env = self._container_env(pod, container)
        result_mount = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        rewrites = {result_mount: str(proc.result_path)}
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
        cwd = rewrite_paths(cwd, rewrites) if cwd else str(proc.dir)
        full_env = {**self.base_env, **env}
        if self.notify_socket is not None:
            full_env[NOTIFY_ENV] = str(self.root / NOTIFY_SOCKET_NAME)
        if "OMP_NUM_THREADS" not in env:
            full_env["OMP_NUM_THREADS"] = str(cpu_threads(container.get("resources") or {}))
        proc.result_path.touch()
        started_at = utc_now()
        if self.launcher is not None and self.launcher.handles(argv):
            pid = self.launcher.spawn(argv, full_env, cwd, str(proc.log_path), str(proc.exit_path))
            proc.launched = True
        else:
            pid = self._spawn_subprocess(proc, argv, full_env, cwd)
        proc.pid = pid
        proc.start_ticks = process_start_ticks(pid)
        write_json_atomic(proc.dir / "process.json", {"pid": pid, "startTicks": proc.start_ticks,
                                                      "startedAt": started_at})
        proc.status = running_status(container["name"], started_at)

    def _spawn_subprocess(self, proc: PodProcess, argv: list[str], env: dict, cwd: str) -> int:
        # A shell stays as the group leader and records the exit code, so even a later kubelet (after this one was
        # killed) learns how the container ended.
        script = 'exit_file=$1; shift; "$@"; code=$?; printf \'{"exitCode": %d}\' "$code" > "$exit_file.tmp" ' \
                 '&& mv "$exit_file.tmp" "$exit_file"; exit $code'
        with open(proc.log_path, "ab") as log:
            popen = subprocess.Popen(["/bin/sh", "-c", script, "sh", str(proc.exit_path), *argv], env=env, cwd=cwd,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        proc.popen = popen
        return popen.pid

    def _container_env(self, pod: dict, container: dict) -> dict:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, store in (("secretRef", self.secrets), ("configMapRef", self.config_maps)):
                ref = source.get(kind)
                if ref is None:
                    continue
                data = self._lookup(store, pod, ref["name"])
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
            source = item.get("valueFrom") or {}
            value = self._env_from_source(pod, name, source)
            if value is not None:
                env[name] = value
        return env

    def _env_from_source(self, pod: dict, name: str, source: dict) -> str | None:
        for kind, store, what in (("secretKeyRef", self.secrets, "secret"),
                                  ("configMapKeyRef", self.config_maps, "configmap")):
            ref = source.get(kind)
            if ref is None:
                continue
            data = self._lookup(store, pod, ref["name"])
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

    @staticmethod
    def _lookup(store: dict, pod: dict, name: str) -> dict | None:
        namespace = pod.get("metadata", {}).get("namespace") or "default"
        found = store.get(f"{namespace}/{name}")
        return found if found is not None else store.get(name)

    def _mount_map(self, proc: PodProcess, container: dict) -> dict[str, str]:
        """mountPath -> local folder for each of the container's volume mounts."""
        volumes = {v["name"]: v for v in proc.pod.get("spec", {}).get("volumes") or []}
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodConfigError("CreateContainerConfigError", f'volume "{mount["name"]}" is not defined')
            folder = self._volume_folder(proc, volume)
            if mount.get("subPath"):
                folder = folder / mount["subPath"]
                folder.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/") or "/"] = str(folder)
        return mounts

    def _volume_folder(self, proc: PodProcess, volume: dict) -> Path:
        name = volume["name"]
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            folder = self.host_path_root / path.relative_to(path.anchor) if self.host_path_root else path
            if volume["hostPath"].get("type", "") in ("Directory", "File") and not folder.exists():
                raise PodConfigError("FailedMount", f'volume "{name}": hostPath {folder} does not exist')
            if volume["hostPath"].get("type", "") in ("", "DirectoryOrCreate"):
                folder.mkdir(parents=True, exist_ok=True)
            return folder
        if "emptyDir" in volume:
            folder = proc.dir / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        if "persistentVolumeClaim" in volume:
            folder = self.claims_root / volume["persistentVolumeClaim"]["claimName"]
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        for kind, store, what in (("secret", self.secrets, "secret"), ("configMap", self.config_maps, "configmap")):
            if kind in volume:
                ref_name = volume[kind].get("secretName") or volume[kind].get("name")
                data = self._lookup(store, proc.pod, ref_name)
                if data is None:
                    if volume[kind].get("optional"):
                        data = {}
                    else:
                        raise PodConfigError("FailedMount", f'volume "{name}": {what} "{ref_name}" not found')
                folder = proc.dir / "volumes" / name
                folder.mkdir(parents=True, exist_ok=True)
                for key, value in data.items():
                    (folder / key).write_text(str(value))
                return folder
        raise PodConfigError("FailedMount", f'volume "{name}": unsupported volume type {sorted(set(volume) - {"name"})}')

    def _fail_before_start(self, proc: PodProcess, reason: str, message: str) -> None:
        name = (proc.pod.get("spec", {}).get("containers") or [{"name": "main"}])[0].get("name", "main")
        now = utc_now()
        proc.status = {
            "phase": POD_FAILED, "reason": reason, "message": message,
            "containerStatuses": [{"name": name, "ready": False, "restartCount": 0, "state": {
                "terminated": {"exitCode": 128, "reason": reason, "message": message,
                               "startedAt": now, "finishedAt": now}}}],
        }
        write_json_atomic(proc.dir / "failed.json", proc.status)

    # ------------------------------------------------------------------------------------------- watching, adopting
    def _adopt(self, proc: PodProcess) -> bool:
        """Take over a pod an earlier kubelet started on this root, if it is the same pod (uid) and still useful."""
        old = read_json(proc.dir / "pod.json")
        uid = proc.pod.get("metadata", {}).get("uid")
        if old is None or not uid or old.get("metadata", {}).get("uid") != uid:
            return False
        if (proc.dir / "interrupted").exists():
            return False
        failed = read_json(proc.dir / "failed.json")
        if failed is not None:
            proc.status = failed
            return True
        info = read_json(proc.dir / "process.json")
        if info is None:
            return False
        proc.pid, proc.start_ticks = info["pid"], info.get("startTicks")
        container = proc.pod["spec"]["containers"][0]["name"]
        if proc.exit_path.exists():
            proc.status = running_status(container, info["startedAt"])
            self._refresh(proc)
            return True
        if self._alive(proc):
            proc.status = running_status(container, info["startedAt"])
            return True
        return False  # it died while nobody watched and left no exit code: run it again

    def _launcher_alive(self) -> bool:
        alive = getattr(self.launcher, "alive", None)
        return bool(alive()) if callable(alive) else False

    def _alive(self, proc: PodProcess) -> bool:
        if proc.popen is not None:
            return proc.popen.poll() is None
        if proc.pid is None:
            return False
        ticks = process_start_ticks(proc.pid)
        return ticks is not None and (proc.start_ticks is None or ticks == proc.start_ticks)

    def _refresh(self, proc: PodProcess) -> None:
        if proc.status.get("phase") in POD_FINISHED_PHASES:
            return
        if proc.pid is None:
            return
        exit_info = read_json(proc.exit_path)
        if exit_info is None:
            if self._alive(proc):
                return
            exit_info = read_json(proc.exit_path)  # it may have written the file just before it ended
            if exit_info is None and proc.launched and self._launcher_alive():
                # The launcher reaps its children and records how they ended: give it a moment.
                proc.gone_since = proc.gone_since or time.monotonic()
                if time.monotonic() - proc.gone_since < LAUNCHER_EXIT_GRACE_SECONDS:
                    return
            if exit_info is None and proc.popen is not None:
                exit_info = exit_info_of(proc.popen.returncode)
            if exit_info is None:
                exit_info = {"exitCode": LOST_EXIT_CODE, "lost": True}
        if proc.popen is not None:
            proc.popen.poll()  # reap
        self._finish(proc, exit_info)

    def _finish(self, proc: PodProcess, exit_info: dict) -> None:
        code = int(exit_info["exitCode"])
        container = proc.pod["spec"]["containers"][0]
        message = read_termination_message(proc.result_path)
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = log_tail(proc.log_path)
        if exit_info.get("lost") and not message:
            message = "the container's process ended while no kubelet was watching it"
        started = proc.status.get("startTime") or utc_now()
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": started, "finishedAt": exit_info.get("finishedAt") or utc_now()}
        if exit_info.get("signal"):
            terminated["signal"] = int(exit_info["signal"])
        if message:
            terminated["message"] = message
        proc.status = {
            "phase": POD_SUCCEEDED if code == 0 else POD_FAILED,
            "startTime": started,
            "containerStatuses": [{"name": container["name"], "ready": False, "restartCount": 0,
                                   "state": {"terminated": terminated}}],
        }

    def _kill(self, proc: PodProcess) -> None:
        if proc.pid is not None and self._alive(proc):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:
                pass
        if proc.popen is not None:
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def cpu_threads(resources: dict) -> int:
    """Threads for a container, from its CPU limit (or request), as a cgroup quota would allow: at least 1."""
    value = (resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get("cpu")
    if value is None:
        return 1
    text = str(value)
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return 1
    return max(1, min(os.cpu_count() or 1, math.ceil(cores)))


def running_status(container_name: str, started_at: str) -> dict:
    return {
        "phase": POD_RUNNING,
        "startTime": started_at,
        "containerStatuses": [{"name": container_name, "ready": True, "restartCount": 0,
                               "state": {"running": {"startedAt": started_at}}}],
    }


def exit_info_of(returncode: int | None) -> dict:
    """A waitpid-style return code (negative: killed by that signal) as the container's exit record."""
    if returncode is None:
        return {"exitCode": LOST_EXIT_CODE, "lost": True}
    if returncode < 0:
        return {"exitCode": 128 - returncode, "signal": -returncode, "finishedAt": utc_now()}
    return {"exitCode": returncode, "finishedAt": utc_now()}


def read_termination_message(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(TERMINATION_MESSAGE_LIMIT).decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    return "\n".join(lines)[-TERMINATION_MESSAGE_LIMIT:]


def rewrite_paths(value: str, rewrites: dict[str, str]) -> str:
    """Replace each mount path (as a whole path prefix) with its local folder."""
    for mount_path, folder in sorted(rewrites.items(), key=lambda item: -len(item[0])):
        value = re.sub(rf"(?<![\w.\-/]){re.escape(mount_path)}(?=/|$|[\s\"',:;=])", lambda _: folder, value)
    return value


def expand_vars(value: str, env: dict) -> str:
    """Kubernetes `$(VAR)` expansion: known variables are replaced, `$$(VAR)` escapes, unknown ones stay."""
    def replace(match: re.Match) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return match.group(0)[1:]
        return env.get(name, match.group(0))

    return re.sub(r"(\$)?\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)", replace, value)
