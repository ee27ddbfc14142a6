"""A process kubelet: runs Pod manifests as local processes.

`ProcessKubelet.run_pod(pod)` starts the pod's (single) container as a process in its own session and process
group, with its command, args and env (values, `secretKeyRef`/`configMapKeyRef`/`fieldRef`, `envFrom`), volumes mapped
to folders and `terminationMessagePath` mapped to a per-pod result file (all resolved by `container_config`).
`poll()` returns the pods whose status changed, as Kubernetes `PodStatus` dicts (phase Pending -> Running ->
Succeeded/Failed, container state with exit code and the termination message). `delete_pod()` kills the pod's process
group.

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
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fedtask_operator.core.phases import POD_FAILED, POD_FINISHED_PHASES, POD_PENDING, POD_RUNNING, POD_SUCCEEDED
from fedtask_operator.local.container_config import (
    Mount,
    PodConfigError,
    VolumePlaces,
    container_env,
    local_command,
    pod_volumes,
    resolve_mount,
)
from fedtask_operator.local.files import read_json, utc_timestamp, write_json_atomic

TERMINATION_MESSAGE_LIMIT = 4096
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


def pod_key(pod: dict) -> str:
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"


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
        env = container_env(pod, container, self.secrets, self.config_maps)
        command = local_command(container, env, mounts, proc.result_path, proc.dir)
        argv, cwd = command.argv, command.cwd
        full_env = {**self.base_env, **command.env}
        if self.notify_socket is not None:
            full_env[NOTIFY_ENV] = str(self.root / NOTIFY_SOCKET_NAME)
        if "OMP_NUM_THREADS" not in command.env:
            full_env["OMP_NUM_THREADS"] = str(cpu_threads(container.get("resources") or {}))
        full_env.update(capped_threads(full_env))
        proc.result_path.touch()
        started_at = utc_timestamp()
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

    def _mount_map(self, proc: PodProcess, container: dict) -> dict[str, str]:
        """mountPath -> local folder for each of the container's volume mounts, each made ready in turn."""
        places = VolumePlaces(pod_dir=proc.dir, claims_root=self.claims_root, host_path_root=self.host_path_root)
        volumes = pod_volumes(proc.pod)
        mounts = {}
        for item in container.get("volumeMounts") or []:
            mount = resolve_mount(item, volumes, proc.pod, places, self.secrets, self.config_maps)
            mounts[mount.path] = str(prepare_mount(mount))
        return mounts

    def _fail_before_start(self, proc: PodProcess, reason: str, message: str) -> None:
        name = (proc.pod.get("spec", {}).get("containers") or [{"name": "main"}])[0].get("name", "main")
        now = utc_timestamp()
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
        started = proc.status.get("startTime") or utc_timestamp()
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": started, "finishedAt": exit_info.get("finishedAt") or utc_timestamp()}
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


def capped_threads(env: dict[str, str], cores: int | None = None) -> dict[str, str]:
    """The pod's thread counts (OMP_NUM_THREADS, FEDTASK_TORCH_THREADS, set from its CPU request by the pod builder)
    capped at this machine's cores: pods here share one machine, whatever they request."""
    cores = cores or os.cpu_count() or 1
    return {name: str(cores) for name in ("OMP_NUM_THREADS", "FEDTASK_TORCH_THREADS")
            if env.get(name, "").isdigit() and int(env[name]) > cores}


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
        return {"exitCode": 128 - returncode, "signal": -returncode, "finishedAt": utc_timestamp()}
    return {"exitCode": returncode, "finishedAt": utc_timestamp()}


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


def prepare_mount(mount: Mount) -> Path:
    """Make a mount's folder ready as `resolve_mount` described it; its local path."""
    if mount.must_exist and not mount.folder.exists():
        raise PodConfigError("FailedMount", f'volume "{mount.volume}": hostPath {mount.folder} does not exist')
    if mount.create:
        mount.folder.mkdir(parents=True, exist_ok=True)
    for name, content in mount.files:
        (mount.folder / name).write_text(content)
    if mount.sub_path:
        mount.local_path.mkdir(parents=True, exist_ok=True)
    return mount.local_path
