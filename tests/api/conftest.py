"""Fixtures for the API suite: a kmock-emulated Kubernetes API (see tests/support/kube.py)."""
from __future__ import annotations

import pytest

from tests.support.kube import EmulatedCluster


@pytest.fixture
def cluster(tmp_path) -> EmulatedCluster:
    """An emulated API server with the FederatedTask CRD and built-ins, and a kubeconfig at `cluster.kubeconfig`."""
    with EmulatedCluster(tmp_path / "cluster") as emulated:
        yield emulated
