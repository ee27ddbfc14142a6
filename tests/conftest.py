"""Shared fixtures. `s3_server`: a real S3 server (moto server subprocess) for the whole session."""
from __future__ import annotations

import pytest

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
