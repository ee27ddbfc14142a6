"""A preloaded fork server: worker pods start by fork() in milliseconds instead of paying a second of imports.

`ForkServer.start()` launches `python -m fedtask_operator.local.forkserver FD`, which imports torch and
fedtask_worker, calls `fedtask_worker.preload()` and then waits for requests on a socket. For each request it forks a
child that gets its own session and process group (so killing the pod's group works), cwd, environment,
stdout/stderr (the pod's log) and thread count, runs `fedtask_worker.cli.main(argv)` and records its exit code in the
pod's exit file. The server reaps its children and records the exit code of those that died without recording it
(kill -9).

The kubelet uses it as a launcher: `handles(argv)` is true for `python -m fedtask_worker ...` and `fedtask-worker ...`.
The parent never runs torch compute (it keeps one thread), so no OpenMP pool exists across fork().
"""
from __future__ import annotations

import gc
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from fedtask_operator.local.files import utc_timestamp, write_json_atomic

WORKER_MODULE = "fedtask_worker"
WORKER_SCRIPT = "fedtask-worker"
DEFAULT_ENTRY = "fedtask_worker.cli:main"
NOTIFY_ENV = "FEDTASK_KUBELET_NOTIFY"  # a datagram socket a finished pod pings (set by ProcessKubelet)
# Imported lazily by numpy on the stages' paths (np.unique in partitioning): ~20 ms per pod unless preloaded here.
EXTRA_PRELOAD_MODULES = ("numpy.ma",)
POOL_SIZE = 8  # children waiting for a request: a round's pods start without waiting for fork()
REFILL_AFTER_QUIET_SECONDS = 0.02


def worker_args(argv: list[str]) -> list[str] | None:
    """The worker's own arguments when argv runs the worker, else None."""
    if not argv:
        return None
    program = os.path.basename(argv[0])
    if program == WORKER_SCRIPT:
        return list(argv[1:])
    if program.startswith("python") and argv[1:3] == ["-m", WORKER_MODULE]:
        return list(argv[3:])
    return None


class ForkServerError(RuntimeError):
    pass


class ForkServer:
    """Client side: starts the server process and asks it to spawn worker processes."""

    def __init__(self, python: str = sys.executable, env: dict | None = None, start_timeout: float = 120.0,
                 entry: str = DEFAULT_ENTRY, preload_datasets: list[str] | None = None,
                 warm: list[dict] | None = None):
        self.python = python
        self.entry = entry
        self.preload_datasets = preload_datasets  # None: the worker's default set
        self.warm = warm or []  # tasks to warm up for: see warm_up()
        self.env = env
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.preload_seconds: float | None = None
        self._lock = threading.Lock()
        self._buffer = b""

    # The launcher protocol of ProcessKubelet
    def handles(self, argv: list[str]) -> bool:
        return worker_args(argv) is not None

    def spawn(self, argv: list[str], env: dict, cwd: str, log_path: str, exit_path: str) -> int:
        args = worker_args(argv)
        if args is None:
            raise ForkServerError(f"not a worker command: {argv[:3]}")
        request = {"argv": args, "env": env, "cwd": cwd, "log": log_path, "exit": exit_path}
        with self._lock:
            for attempt in (1, 2):
                if not self.alive():
                    self._start_locked()
                try:
                    self._send(request)
                    reply = self._receive()
                except (OSError, ForkServerError):
                    if attempt == 2:
                        raise
                    self._stop_locked()
                    continue
                if "error" in reply:
                    raise ForkServerError(reply["error"])
                return int(reply["pid"])
        raise ForkServerError("unreachable")

    def start(self) -> ForkServer:
        with self._lock:
            if not self.alive():
                self._start_locked()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self.sock is not None

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> ForkServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_locked(self) -> None:
        self._stop_locked()
        ours, theirs = socket.socketpair()
        env = dict(os.environ if self.env is None else self.env)
        self.process = subprocess.Popen(
            [self.python, "-m", "fedtask_operator.local.forkserver", str(theirs.fileno()), self.entry,
             json.dumps(self.preload_datasets), json.dumps(self.warm)],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal goes to the runtime, which stops the server itself
        )
        theirs.close()
        self.sock = ours
        self._buffer = b""
        ready = self._receive(timeout=self.start_timeout)
        if not ready.get("ready"):
            self._stop_locked()
            raise ForkServerError(f"the fork server did not start: {ready.get('error', ready)}")
        self.preload_seconds = ready.get("seconds")

    def _stop_locked(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is not None:
            # The server keeps nothing worth saving: running pods live in their own sessions, and waiting children
            # exit when their pipe closes. Killing it spares the wait for torch's interpreter teardown.
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None

    def _send(self, message: dict) -> None:
        assert self.sock is not None
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def _receive(self, timeout: float = 30.0) -> dict:
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ForkServerError(f"no answer from the fork server within {timeout}s")
            readable, _, _ = select.select([self.sock], [], [], min(remaining, 0.5))
            if not readable:
                if self.process is not None and self.process.poll() is not None:
                    raise ForkServerError(f"the fork server exited with code {self.process.returncode}")
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ForkServerError("the fork server closed its socket")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


# ------------------------------------------------------------------------------------------------------ server side
def run_child(request: dict, entry) -> None:
    """In the forked child: become the pod's process and never return."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.close(null_fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        use_pythonpath(os.environ.get("PYTHONPATH", ""))
        sys.argv = [WORKER_SCRIPT, *request["argv"]]
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            import torch

            torch.set_num_threads(int(threads))
        try:
            code = int(entry(list(request["argv"])) or 0)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # the pod's own failure: report it in its log, like any crashing process
            traceback.print_exc()
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        try:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            write_json_atomic(Path(request["exit"]), {"exitCode": code, "finishedAt": utc_timestamp(),
                                              "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 4)})
            notify_exit(os.environ.get(NOTIFY_ENV))
        except Exception:
            pass
        os._exit(code)


def use_pythonpath(value: str) -> None:
    """Give a forked pod the sys.path a fresh interpreter would build from its PYTHONPATH: the entries it lacks go
    in front of the preloaded ones (the user's modules next to the manifest, a pod's own PYTHONPATH)."""
    missing = [os.path.abspath(entry) for entry in value.split(os.pathsep) if entry]
    missing = [entry for entry in dict.fromkeys(missing) if entry not in sys.path]
    if missing:
        sys.path[1:1] = missing
        import importlib

        importlib.invalidate_caches()


def notify_exit(path: str | None) -> None:
    """Wake the kubelet that waits on its notification socket (it polls anyway; this only saves latency)."""
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notifier:
        notifier.setblocking(False)
        try:
            notifier.sendto(b"x", path)
        except OSError:
            pass


def serve(fd: int, entry_path: str = DEFAULT_ENTRY, preload_datasets: list[str] | None = None,
          warm: list[dict] | None = None) -> int:
    sock = socket.socket(fileno=fd)
    started = time.monotonic()
    try:
        import importlib

        import torch

        torch.set_num_threads(1)
        import fedtask_worker

        module_name, _, function = entry_path.partition(":")
        entry = getattr(importlib.import_module(module_name), function)
        if hasattr(fedtask_worker, "preload"):
            if preload_datasets is None:
                fedtask_worker.preload()
            else:
                fedtask_worker.preload(preload_datasets)
        for module in EXTRA_PRELOAD_MODULES:
            importlib.import_module(module)
        for item in warm or []:
            warm_up(item)
        gc.freeze()  # children share the preloaded objects; their GC must not touch (and so copy) those pages
    except BaseException as err:  # report why we cannot serve, then stop
        _send_or_give_up(sock, {"ready": False, "error": f"{type(err).__name__}: {err}"})
        return 1
    if not _send_or_give_up(sock, {"ready": True, "seconds": time.monotonic() - started}):
        return 0

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the runtime, which closes our socket
    pool = WarmPool(sock, entry)
    children: dict[int, str] = {}  # pid -> exit file
    buffer = b""
    while True:
        reap(children)
        # Requests first: a round's pods come in a burst, and a fork in the middle would delay the rest. Refill the
        # pool of waiting children once the client has been quiet for a moment.
        readable, _, _ = select.select([sock], [], [], REFILL_AFTER_QUIET_SECONDS if pool.needs_refill() else 0.05)
        if not readable:
            if pool.needs_refill():
                pool.refill_one()
            continue
        try:
            chunk = sock.recv(1 << 20)
        except OSError:  # reset by a client that went away with our replies unread
            chunk = b""
        if not chunk:
            pool.close()
            return 0  # the client went away; running children keep going on their own
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            try:
                pid = pool.hand_over(request)
                reply = {"pid": pid}
                children[pid] = request["exit"]
            except OSError as err:
                reply = {"error": f"fork failed: {err}"}
            if not _send_or_give_up(sock, reply):  # the client is gone (Ctrl-C while it waited for us)
                pool.close()
                return 0


def _send_or_give_up(sock: socket.socket, message: dict) -> bool:
    """Send one message to the client; False when the client is gone (it stopped, or was stopped, meanwhile)."""
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
        return True
    except OSError:
        return False


class WarmPool:
    """Children forked ahead of time, each waiting on its own pipe for the request it will run.

    A request is handed to a waiting child at once (no fork on the request path); the server forks the replacement
    while the client goes on. A waiting child whose pipe closes without a request (the server ended) exits.
    """

    def __init__(self, sock: socket.socket, entry, size: int = POOL_SIZE):
        self.sock = sock
        self.entry = entry
        self.size = size
        self.waiting: list[tuple[int, int]] = []  # (pid, write end of its pipe)

    def needs_refill(self) -> bool:
        return len(self.waiting) < self.size

    def refill_one(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            for _, other in self.waiting:
                os.close(other)
            self.sock.close()
            request = read_request(read_fd)
            if request is None:
                os._exit(0)
            run_child(request, self.entry)
        os.close(read_fd)
        self.waiting.append((pid, write_fd))

    def hand_over(self, request: dict) -> int:
        if not self.waiting:
            self.refill_one()
        pid, write_fd = self.waiting.pop(0)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(json.dumps(request).encode())
        return pid

    def close(self) -> None:
        for _, write_fd in self.waiting:
            os.close(write_fd)
        self.waiting.clear()


def warm_up(task: dict) -> None:
    """Do once, here, what every pod of the task would otherwise do first in its own process: load the dataset,
    compute the partition and the shared set (cached per process), and run the model's first training and evaluation
    steps (kernel selection and allocator warm-up for its real shapes). Best effort: a pod reports real errors."""
    try:
        from fedtask_worker.datasets import load_dataset
        from fedtask_worker.models import build_model
        from fedtask_worker.partition import device_indices, shared_indices
        from fedtask_worker.training import evaluate, load_plugin, train_local

        step = load_plugin(task.get("trainStep"), "train-step")
        function = load_plugin(task.get("evalFunction"), "eval-function")
        dataset = load_dataset(task["dataset"], task.get("datasetArgs") or {})
        partition = task.get("partition") or {}
        shared = float(task.get("sharedFraction") or 0.0)
        if task.get("deviceCount"):
            device_indices(dataset.y_train, partition.get("scheme", "iid"), 0, int(task["deviceCount"]),
                           seed=int(partition.get("seed", 0)), alpha=float(partition.get("alpha", 0.5)),
                           classes_per_device=int(partition.get("classesPerDevice", 2)), shared_fraction=shared)
        if shared > 0:
            shared_indices(dataset.y_train, shared)
        model = build_model(task["model"], dataset.input_shape, dataset.num_classes, task.get("modelArgs") or {},
                            seed=0)
        for batch_size, optimizer in task.get("batches") or [(32, "sgd")]:
            count = min(len(dataset.y_train), 2 * int(batch_size))
            train_local(model, dataset.x_train[:count], dataset.y_train[:count], batch_size=int(batch_size),
                        optimizer=optimizer, step=step)
        evaluate(model, dataset.x_val[:256], dataset.y_val[:256], step=step, function=function)
    except Exception as err:
        print(f"fork server: warm-up for {task.get('model')}/{task.get('dataset')} skipped: {err}", file=sys.stderr)


def read_request(fd: int) -> dict | None:
    with os.fdopen(fd, "rb") as pipe:
        data = pipe.read()
    return json.loads(data) if data else None


def reap(children: dict[int, str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exit_path = children.pop(pid, None)
        if exit_path is None or Path(exit_path).exists():
            continue
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            record = {"exitCode": 128 + sig, "signal": sig, "finishedAt": utc_timestamp()}
        else:
            record = {"exitCode": os.waitstatus_to_exitcode(status), "finishedAt": utc_timestamp()}
        try:
            write_json_atomic(Path(exit_path), record)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), sys.argv[2], *(json.loads(arg) for arg in sys.argv[3:5])))
