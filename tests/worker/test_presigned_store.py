"""The worker's store on presigned URLs only (issue 12, per-pod least privilege): no store credentials in the
environment, every `s3://` object through the URLs granted for it (FEDTASK_STORE_ACCESS inline, or
FEDTASK_STORE_ACCESS_URL naming an access manifest in the store).

The transfers run on moto's server in the default suite (moto does not check signatures); what the store refuses
(a tampered, expired or wrong-method URL) runs on the real MinIO server (marker `cluster`)."""
from __future__ import annotations

import datetime
import http.server
import io
import json
import threading
import time

import numpy as np
import pytest

from fedtask_worker import presigned, store
from fedtask_worker.errors import BadInput, TransientFailure
from fedtask_worker.tensors import load_arrays
from tests.support.worker import random_model, run_stage, write_update

BUCKET = "fedtask"


def sign(server, grants: dict[str, tuple[str, ...]], seconds: float = 600) -> dict:
    """The access JSON for {uri: methods}, signed with the server's root keys as the operator does."""
    import minio

    client = minio.Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key,
                         secure=False, region=server.region)
    objects = {}
    for uri, methods in grants.items():
        bucket, _, key = uri[len("s3://"):].partition("/")
        objects[uri] = {method: client.get_presigned_url(method, bucket, key,
                                                         expires=datetime.timedelta(seconds=seconds))
                        for method in methods}
    return {"objects": objects}


@pytest.fixture(params=["moto", pytest.param("minio", marks=pytest.mark.cluster)])
def store_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A clean S3 server with the bucket made; the pod's environment holds no store settings or keys."""
    server = request.getfixturevalue("s3_server" if request.param == "moto" else "minio_server")
    server.client().make_bucket(BUCKET)
    for name in ("FEDTASK_S3_ENDPOINT", "FEDTASK_S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    return server


def grant(monkeypatch, access: dict) -> None:
    monkeypatch.delenv(presigned.ACCESS_ENV, raising=False)
    monkeypatch.delenv(presigned.ACCESS_URL_ENV, raising=False)
    monkeypatch.setenv(presigned.ACCESS_ENV, json.dumps(access))


def test_reads_and_writes_go_through_the_granted_urls_only(store_server, monkeypatch, tmp_path):
    own, model, other = (f"s3://{BUCKET}/t/update.safetensors", f"s3://{BUCKET}/t/global.safetensors",
                         f"s3://{BUCKET}/t/other.safetensors")
    store_server.client().put_object(BUCKET, "t/global.safetensors", io.BytesIO(b"G" * 5000), 5000)
    grant(monkeypatch, sign(store_server, {own: ("PUT",), model: ("GET",), other: ()}))

    assert store.read_bytes(model) == b"G" * 5000
    assert store.probe(model, 8) == (5000, b"G" * 8)
    assert store.exists(model)
    source = tmp_path / "u"
    source.write_bytes(b"U" * 70000)
    assert store.write_file(own, str(source)) == 70000
    assert store.write_bytes(own, b"v" * 10) == 10
    stored = store_server.client().get_object(BUCKET, "t/update.safetensors")
    assert stored.read() == b"v" * 10
    stored.close()
    with store.local_copy(model) as path:
        assert open(path, "rb").read() == b"G" * 5000
    with pytest.raises(BadInput, match="more than 100 bytes"):
        store.download(model, str(tmp_path / "big"), max_bytes=100)
    assert not (tmp_path / "big").exists()

    # what the pod was not granted is refused before any request, naming the object
    with pytest.raises(BadInput, match=f"{other}: this pod may not read it"):
        store.read_bytes(other)
    with pytest.raises(BadInput, match=f"{model}: this pod may not write it"):
        store.write_bytes(model, b"poisoned")
    with pytest.raises(BadInput, match=f"{own}: this pod may not read it"):
        store.read_bytes(own)
    with pytest.raises(BadInput, match="listing is not possible"):
        store.list_objects(f"s3://{BUCKET}/t")


def test_a_missing_object_is_not_found_and_exists_says_no(store_server, monkeypatch):
    absent, empty = f"s3://{BUCKET}/t/absent", f"s3://{BUCKET}/t/empty"
    store_server.client().put_object(BUCKET, "t/empty", io.BytesIO(b""), 0)
    grant(monkeypatch, sign(store_server, {absent: ("GET",), empty: ("GET",)}))
    assert not store.exists(absent) and store.exists(empty)
    with pytest.raises(store.NotFound):
        store.probe(absent)
    assert store.probe(empty) == (0, b"")
    with pytest.raises(BadInput, match=f"{absent}: read failed: NoSuchKey"):
        store.read_bytes(absent)


def test_the_grants_come_from_a_manifest_object_named_by_one_url(store_server, monkeypatch):
    updates = [f"s3://{BUCKET}/t/round-0001/updates/d{index:03d}.safetensors" for index in range(40)]
    for index, uri in enumerate(updates):
        store_server.client().put_object(BUCKET, uri.split("/", 3)[3], io.BytesIO(bytes([index]) * 10), 10)
    access = sign(store_server, {uri: ("GET",) for uri in updates})
    body = json.dumps(access).encode()
    store_server.client().put_object(BUCKET, "t/access/agg.json", io.BytesIO(body), len(body))
    manifest_url = sign(store_server, {f"s3://{BUCKET}/t/access/agg.json": ("GET",)})["objects"]
    monkeypatch.delenv(presigned.ACCESS_ENV, raising=False)
    monkeypatch.setenv(presigned.ACCESS_URL_ENV, manifest_url[f"s3://{BUCKET}/t/access/agg.json"]["GET"])
    assert [store.read_bytes(uri) for uri in updates] == [bytes([index]) * 10 for index in range(40)]
    with pytest.raises(BadInput, match="this pod may not write it"):
        store.write_bytes(updates[0], b"x")


def test_bad_grants_are_bad_input_naming_the_variable(monkeypatch):
    for text in ("not json", '{"objects": {"s3://b/k": {"DELETE": "http://x"}}}', "[]"):
        monkeypatch.setenv(presigned.ACCESS_ENV, text)
        with pytest.raises(BadInput, match="FEDTASK_STORE_ACCESS: the store access grants"):
            store.read_bytes("s3://b/k")


def test_the_aggregate_stage_runs_on_presigned_urls(store_server, monkeypatch, tmp_path, capsys):
    base = f"s3://{BUCKET}/ns/t/uid"
    client = store_server.client()
    base_model = random_model(0)
    for name, arrays in [("round-0000/global.safetensors", base_model),
                         ("round-0001/updates/d000.safetensors", random_model(1)),
                         ("round-0001/updates/d001.safetensors", random_model(2))]:
        path = tmp_path / name.replace("/", "_")
        write_update(path, arrays, num_samples=5, round=1)
        client.fput_object(BUCKET, f"ns/t/uid/{name}", str(path))
    updates = [f"{base}/round-0001/updates/d000.safetensors", f"{base}/round-0001/updates/d001.safetensors"]
    output = f"{base}/round-0001/aggregate.safetensors"
    grant(monkeypatch, sign(store_server, {f"{base}/round-0000/global.safetensors": ("GET",),
                                           **{uri: ("GET",) for uri in updates}, output: ("PUT",)}))
    code, result, err = run_stage(["aggregate", "--round", 1, "--output", output, "--strategy", "fedavg",
                                   "--base", f"{base}/round-0000/global.safetensors", *updates], capsys)
    assert code == 0, err
    assert result["updates"] == 2
    client.fget_object(BUCKET, "ns/t/uid/round-0001/aggregate.safetensors", str(tmp_path / "agg"))
    arrays, _ = load_arrays(str(tmp_path / "agg"), "agg")
    expected = (random_model(1)["layer.bias"] + random_model(2)["layer.bias"]) / 2
    np.testing.assert_allclose(arrays["layer.bias"], expected, rtol=1e-5)


class _Flaky(http.server.BaseHTTPRequestHandler):
    failures = 2
    seen: list[str] = []

    def do_GET(self):
        type(self).seen.append(self.path)
        if len(type(self).seen) <= type(self).failures:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
        elif self.path.startswith("/denied"):
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self.send_response(403)
        else:
            body = b"payload"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    _Flaky.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_outage_is_retried_and_a_refusal_is_not(flaky_server, monkeypatch):
    monkeypatch.setenv("FEDTASK_STORE_RETRY_SECONDS", "20")
    monkeypatch.setenv("FEDTASK_STORE_RETRY_MAX_DELAY_SECONDS", "0.05")
    monkeypatch.setenv(presigned.ACCESS_ENV, json.dumps({"objects": {
        "s3://b/ok": {"GET": f"{flaky_server}/ok"}, "s3://b/denied": {"GET": f"{flaky_server}/denied"}}}))
    assert store.read_bytes("s3://b/ok") == b"payload"
    assert len(_Flaky.seen) == 3  # two 503 SlowDown answers, then the object
    started = time.monotonic()
    with pytest.raises(BadInput, match="s3://b/denied: read failed: AccessDenied: Request has expired"):
        store.read_bytes("s3://b/denied")
    assert len(_Flaky.seen) == 4 and time.monotonic() - started < 5  # refused once, not retried


def test_an_outage_past_the_budget_is_a_transient_failure(flaky_server, monkeypatch):
    _Flaky.failures = 10 ** 6
    try:
        monkeypatch.setenv("FEDTASK_STORE_RETRY_SECONDS", "0.3")
        monkeypatch.setenv("FEDTASK_STORE_RETRY_MAX_DELAY_SECONDS", "0.05")
        monkeypatch.setenv(presigned.ACCESS_ENV, json.dumps({"objects": {"s3://b/ok": {"GET": f"{flaky_server}/ok"}}}))
        with pytest.raises(TransientFailure, match="s3://b/ok: read still failing .* SlowDown"):
            store.read_bytes("s3://b/ok")
    finally:
        _Flaky.failures = 2


# --------------------------------------------------------------------------------------------------------------------
# What the real store refuses (MinIO checks every signature)


@pytest.mark.cluster
def test_the_store_refuses_a_tampered_wrong_method_or_expired_url(minio_server, monkeypatch):
    client = minio_server.client()
    client.make_bucket(BUCKET)
    client.put_object(BUCKET, "ns/t/global", io.BytesIO(b"model"), 5)
    client.put_object(BUCKET, "ns/t/later-global", io.BytesIO(b"later"), 5)
    own = f"s3://{BUCKET}/ns/t/global"
    access = sign(minio_server, {own: ("GET",)})
    url = access["objects"][own]["GET"]
    tampered = url.replace("/ns/t/global?", "/ns/t/later-global?")
    monkeypatch.setenv(presigned.ACCESS_ENV, json.dumps({"objects": {
        own: {"GET": url, "PUT": url},  # a GET URL used to PUT
        f"s3://{BUCKET}/ns/t/later-global": {"GET": tampered, "PUT": tampered}}}))
    assert store.read_bytes(own) == b"model"
    with pytest.raises(BadInput, match="write failed: SignatureDoesNotMatch"):
        store.write_bytes(own, b"poisoned")
    with pytest.raises(BadInput, match="read failed: SignatureDoesNotMatch"):
        store.read_bytes(f"s3://{BUCKET}/ns/t/later-global")
    with pytest.raises(BadInput, match="write failed: SignatureDoesNotMatch"):
        store.write_bytes(f"s3://{BUCKET}/ns/t/later-global", b"poisoned")
    short = sign(minio_server, {own: ("GET",)}, seconds=1)
    monkeypatch.setenv(presigned.ACCESS_ENV, json.dumps(short))
    time.sleep(2.1)
    with pytest.raises(BadInput, match="read failed: AccessDenied: Request has expired"):
        store.read_bytes(own)
    body = client.get_object(BUCKET, "ns/t/later-global")
    assert body.read() == b"later"
    body.close()
