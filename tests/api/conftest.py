"""Fixtures for the API suite: a kmock-emulated Kubernetes API (see tests/support/kube.py)."""
from __future__ import annotations

import pytest

from tests.support.kube import EmulatedCluster


@pytest.fixture
def cluster(tmp_path) -> EmulatedCluster:
    """An emulated API server with the FederatedTask CRD and built-ins, and a kubeconfig at `cluster.kubeconfig`."""
    with EmulatedCluster(tmp_path / "cluster") as emulated:
        yield emulated


@pytest.fixture
def store_bucket(s3_server) -> str:
    s3_server.client().make_bucket("fedtask")
    return "fedtask"


@pytest.fixture
def operator(cluster, s3_server, store_bucket, tmp_path):
    """`fedtask operator --namespace default --standalone` as a subprocess; its log is printed when a test fails."""
    from tests.support.operator import OperatorProcess

    with OperatorProcess(cluster, s3_server, tmp_path / "operator.log", "--standalone") as process:
        yield process
    print(process.log()[-20000:])


@pytest.fixture(scope="session")
def fork_server():
    """Preloaded worker processes (torch imported once): pods start in milliseconds, as in `fedtask run`."""
    from fedtask_operator.local.forkserver import ForkServer

    server = ForkServer(preload_datasets=["digits"]).start()
    yield server
    server.stop()


@pytest.fixture
def kubelet(cluster, s3_server, tmp_path, fork_server):
    import os

    from tests.support.kubelet import ApiKubelet

    env = dict(os.environ, OMP_NUM_THREADS="1", FEDTASK_STORE_RETRY_SECONDS="5")
    with ApiKubelet(cluster, tmp_path / "kubelet", base_env=env, launcher=fork_server) as running:
        yield running
    assert not running.errors, running.errors
