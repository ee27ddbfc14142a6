"""A real MinIO server for tests: the `minio` binary that hack/install-cluster-tools.sh builds from its Go module,
started as `minio server` on a free local port with a temporary data folder.

The tests that use it are marked `cluster` (make test-cluster builds the binary first; `make test` runs before any
build and keeps the moto variants). A missing binary is a failure that says how to build it, never a skip.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port, stop_process
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "hack" / "install-cluster-tools.sh"


class MinioMissing(RuntimeError):
    """The MinIO server binary is not built."""


def minio_binary() -> Path:
    """The built `minio` (the folder comes from `hack/install-cluster-tools.sh --check`: one place for versions)."""
    result = subprocess.run([str(INSTALL_SCRIPT), "--check"], capture_output=True, text=True, timeout=30)
    binary = Path(result.stdout.strip()) / "minio"
    if result.returncode != 0 or not os.access(binary, os.X_OK):
        raise MinioMissing(
            f"the MinIO server binary is not built ({result.stderr.strip() or binary}): run "
            f"hack/install-cluster-tools.sh (it builds MinIO and the control plane from their Go modules into "
            f"~/.cache/fedtask/cluster-tools; `make test-cluster` runs it first)")
    return binary


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def run_minio_server(data_dir: Path, timeout: float = 60.0) -> Iterator[S3Server]:
    """`minio server DATA_DIR` on a free port until the block ends; waits until /minio/health/ready answers."""
    binary = minio_binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    port, console = free_port(), free_port()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    env = dict(os.environ, MINIO_ROOT_USER=ACCESS_KEY, MINIO_ROOT_PASSWORD=SECRET_KEY, MINIO_BROWSER="off",
               MINIO_UPDATE="off")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "server", str(data_dir), "--address", f"127.0.0.1:{port}",
             "--console-address", f"127.0.0.1:{console}", "--quiet"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = S3Server(f"127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, REGION, process)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"minio server exited early with code {process.returncode}:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{server.url}/minio/health/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=timeout, interval=0.1, message=f"minio server ready at {server.url}")
        yield server
    finally:
        stop_process(process)


def reset_minio_server(server: S3Server) -> None:
    """Remove every object and bucket, so tests sharing one server start clean."""
    from minio.deleteobjects import DeleteObject

    client = server.client()
    for bucket in client.list_buckets():
        objects = [DeleteObject(o.object_name) for o in client.list_objects(bucket.name, recursive=True)]
        errors = list(client.remove_objects(bucket.name, objects))
        assert not errors, errors
        client.remove_bucket(bucket.name)


def refused(action) -> str:
    """The S3 error code of an action that must be refused (the test fails when it succeeds)."""
    from minio.error import S3Error

    try:
        action()
    except S3Error as error:
        return error.code
    raise AssertionError("the store allowed it")
