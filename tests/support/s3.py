"""A real S3 server for tests: moto's server in a subprocess on a free local port."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

from tests.support.waiting import wait_for

ACCESS_KEY = "fedtask-test-access"
SECRET_KEY = "fedtask-test-secret"
REGION = "us-east-1"


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port, the form FEDTASK_S3_ENDPOINT takes
    access_key: str
    secret_key: str
    region: str
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a pod gets from its Secret/ConfigMap to reach this store."""
        return {
            "FEDTASK_S3_ENDPOINT": self.endpoint,
            "FEDTASK_S3_SECURE": "false",
            "FEDTASK_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self):
        import minio

        return minio.Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                           secure=False, region=self.region)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float) -> None:
    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    wait_for(answers, timeout=timeout, message=f"the moto server to answer at {url}")


@contextlib.contextmanager
def run_s3_server(timeout: float = 30.0) -> Iterator[S3Server]:
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION=REGION)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = S3Server(f"127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, REGION, process)
    try:
        _wait_until_up(server.url, process, timeout)
        yield server
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still running 10 s later."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def reset_s3_server(server: S3Server) -> None:
    """Drop every bucket and object (moto's reset endpoint), so tests sharing a server start clean."""
    request = urllib.request.Request(f"{server.url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
