"""The real control plane for the `cluster` suite: `hack/local-cluster.sh up` + `install` into a temporary folder once
per test module (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, MinIO, node agents; the Helm chart
with its own MinIO), `down` after the module's tests whatever happened.

Needs root (the node agents use PID and mount namespaces) and the built binaries (`hack/install-cluster-tools.sh`,
which `make test-cluster` runs first: a cold build takes many minutes, more than a test's timeout).
"""
from __future__ import annotations

import pytest

from tests.support.cluster import LocalCluster, installed_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> LocalCluster:
    """A cluster for the tests of one module (it goes when the module's tests are done, not at the session's end:
    runs of the whole suite do not keep it up while the other suites run)."""
    with installed_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster
