import io

import pytest


def test_s3_server_serves_real_minio_client(s3_server):
    client = s3_server.client()
    client.make_bucket("probe")
    client.put_object("probe", "a/b.bin", io.BytesIO(b"hello"), 5)
    assert client.get_object("probe", "a/b.bin").read() == b"hello"


def test_s3_server_is_reset_between_tests(s3_server_session, request: pytest.FixtureRequest):
    # what an earlier test leaves behind, written to the shared server before this test's `s3_server` is set up
    s3_server_session.client().make_bucket("left-over")
    s3_server = request.getfixturevalue("s3_server")
    assert not s3_server.client().bucket_exists("left-over")
