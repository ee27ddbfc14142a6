"""Shared fixtures. `s3_server`: a real S3 server (moto server subprocess) for the whole session. `minio_server`: the
real MinIO server (the binary hack/install-cluster-tools.sh builds) for the whole session; for `cluster` tests only."""
from __future__ import annotations

import pytest

from tests.support.minio_server import MinioMissing, minio_binary, reset_minio_server, run_minio_server
from tests.support.s3 import S3Server, reset_s3_server, run_s3_server


@pytest.fixture(scope="session")
def s3_server_session() -> S3Server:
    with run_s3_server() as server:
        yield server


@pytest.fixture
def s3_server(s3_server_session: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """A clean S3 server; its settings are in the environment as a pod would get them (FEDTASK_S3_* + AWS_*).

    Attributes: endpoint (host:port), url, access_key, secret_key, region, env (dict), client() -> minio.Minio.
    """
    reset_s3_server(s3_server_session)
    for name, value in s3_server_session.env.items():
        monkeypatch.setenv(name, value)
    return s3_server_session


@pytest.fixture(scope="session")
def minio_server_session(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    try:
        minio_binary()
        missing = ""
    except MinioMissing as error:
        missing = str(error)
    if missing:  # a failure that says how to build it, not a skip
        pytest.fail(missing, pytrace=False)
    with run_minio_server(tmp_path_factory.mktemp("minio") / "data") as server:
        yield server


@pytest.fixture
def minio_server(minio_server_session: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """A clean real MinIO server, its settings in the environment like `s3_server`'s (same attributes)."""
    reset_minio_server(minio_server_session)
    for name, value in minio_server_session.env.items():
        monkeypatch.setenv(name, value)
    return minio_server_session
