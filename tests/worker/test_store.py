"""The store against real S3 servers with the real minio client, and on disk.

Every S3 test runs twice: on moto's server (the default suite: no build needed) and on the real MinIO server
(marker `cluster`: the binary hack/install-cluster-tools.sh builds, which `make test-cluster` runs first; without it
these fail saying so)."""
import os
import socket
import threading
import time

import numpy as np
import pytest

from fedtask_worker import store
from fedtask_worker.errors import BadInput, TransientFailure
from tests.support.s3 import free_port
from tests.support.worker import random_model, run_stage, write_update


@pytest.fixture(params=["moto", pytest.param("minio", marks=pytest.mark.cluster)])
def store_server(request: pytest.FixtureRequest):
    """A clean S3 server, its settings in the environment: moto's, or the real MinIO server's."""
    return request.getfixturevalue("s3_server" if request.param == "moto" else "minio_server")


def test_s3_roundtrip_creates_the_bucket(store_server, tmp_path):
    uri = "s3://fresh-bucket/a/b/model.safetensors"
    assert store.write_bytes(uri, b"x" * 1000) == 1000
    assert store.read_bytes(uri) == b"x" * 1000
    assert store.exists(uri) and not store.exists("s3://fresh-bucket/nothing")
    assert store.list_objects("s3://fresh-bucket/a/b") == [uri]


def test_s3_multipart_upload_of_a_large_file(store_server, tmp_path):
    source = tmp_path / "big"
    data = os.urandom(3 * 1024 * 1024) * 12  # 36 MB: more than two 16 MB parts
    source.write_bytes(data)
    store.write_file("s3://big/obj", str(source))
    store.download("s3://big/obj", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == data


def read_missing_objects(store_server, monkeypatch) -> float:
    """Read a missing key and a missing bucket with a 30 s retry budget; returns the seconds both took."""
    monkeypatch.setenv("FEDTASK_STORE_RETRY_SECONDS", "30")
    store_server.client().make_bucket("there")
    started = time.monotonic()
    with pytest.raises(BadInput, match="s3://there/missing: read failed: NoSuchKey"):
        store.read_bytes("s3://there/missing")
    with pytest.raises(BadInput, match="s3://absent/x: read failed: NoSuchBucket"):
        store.read_bytes("s3://absent/x")
    return time.monotonic() - started


def test_missing_object_is_bad_input_with_the_uri(store_server, monkeypatch):
    # not retried until the budget runs out: that would end in TransientFailure, not BadInput
    read_missing_objects(store_server, monkeypatch)


@pytest.mark.timing
def test_missing_object_fails_fast(store_server, monkeypatch):
    assert read_missing_objects(store_server, monkeypatch) < 5  # not retried at all (the budget is 30 s)


def read_from_an_unreachable_store(monkeypatch) -> float:
    """Read with a 1.5 s retry budget from a port nobody listens on; returns the seconds it took to give up."""
    monkeypatch.setenv("FEDTASK_S3_ENDPOINT", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("FEDTASK_STORE_RETRY_SECONDS", "1.5")
    started = time.monotonic()
    with pytest.raises(TransientFailure, match="still failing after 1.5 s"):
        store.read_bytes("s3://bucket/key")
    return time.monotonic() - started


class _Clock:
    """time.monotonic and time.sleep for the retry loop: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_retries_back_off_exponentially_with_jitter_up_to_the_configured_cap(monkeypatch):
    monkeypatch.setenv("FEDTASK_STORE_RETRY_SECONDS", "120")
    monkeypatch.setenv("FEDTASK_STORE_RETRY_MAX_DELAY_SECONDS", "3")
    clock = _Clock()
    monkeypatch.setattr(store.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(store.time, "sleep", clock.sleep)
    calls = []

    def refused() -> None:
        calls.append(clock.now)
        raise ConnectionRefusedError("store down")

    with pytest.raises(TransientFailure, match="still failing after 120 s"):
        store.with_retries("s3://b/k", "read", refused)
    nominal = [min(0.2 * 2 ** i, 3.0) for i in range(len(clock.sleeps))]
    for index, (slept, base) in enumerate(zip(clock.sleeps[:-1], nominal, strict=False)):
        assert 0.5 * base <= slept <= 1.5 * base, (index, slept, base)  # the last one is cut to the budget
    assert len(set(clock.sleeps)) > len(clock.sleeps) // 2, "jittered, not one fixed delay"
    assert sum(clock.sleeps) == pytest.approx(120.0)  # the whole budget, not a second more
    assert 40 <= len(calls) <= 90  # ~120 s / 3 s at the cap, plus the ramp (with 5 s it would be 24-48)


def test_an_outage_shorter_than_the_budget_is_survived(monkeypatch):
    monkeypatch.setenv("FEDTASK_STORE_RETRY_SECONDS", "30")
    clock = _Clock()
    monkeypatch.setattr(store.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(store.time, "sleep", clock.sleep)
    heals_at = clock.now + 25.0

    def flaky() -> str:
        if clock.now < heals_at:
            raise TimeoutError("store down")
        return "ok"

    assert store.with_retries("s3://b/k", "read", flaky) == "ok"
    assert 25.0 <= clock.now - 1000.0 <= 25.0 + 1.5 * 5.0  # found it back within one (capped, jittered) wait


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_bad_retry_setting_is_bad_input(monkeypatch, value):
    monkeypatch.setenv("FEDTASK_STORE_RETRY_MAX_DELAY_SECONDS", value)
    with pytest.raises(BadInput, match="FEDTASK_STORE_RETRY_MAX_DELAY_SECONDS"):
        store.with_retries("s3://b/k", "read", lambda: None)


def test_unreachable_store_is_a_transient_failure_after_the_budget(monkeypatch):
    assert read_from_an_unreachable_store(monkeypatch) > 1.4  # the whole budget was used (load only adds to it)


@pytest.mark.timing
def test_unreachable_store_gives_up_soon_after_the_budget(monkeypatch):
    assert read_from_an_unreachable_store(monkeypatch) < 10


def _late_proxy(listen_port: int, target_port: int, delay: float, stop: threading.Event) -> threading.Thread:
    """A TCP proxy that only starts listening after `delay` seconds: a store outage that heals."""

    def pipe(source, target):
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        time.sleep(delay)
        with socket.create_server(("127.0.0.1", listen_port)) as server:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(("127.0.0.1", target_port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_short_outage_loses_nothing(store_server, monkeypatch, tmp_path, capsys):
    port = free_port()
    stop = threading.Event()
    _late_proxy(port, int(store_server.endpoint.rsplit(":", 1)[1]), 1.5, stop)
    monkeypatch.setenv("FEDTASK_S3_ENDPOINT", f"127.0.0.1:{port}")
    try:
        update = write_update(tmp_path / "u.safetensors", random_model(0), 4)
        code, result, err = run_stage(["aggregate", "--output", "s3://models/agg.safetensors", update], capsys)
        assert code == 0, err
    finally:
        stop.set()
    body = store_server.client().get_object("models", "agg.safetensors").read()
    assert body[8:].startswith(b"{") and result["bytes"] == len(body)


def test_stage_exit_code_3_when_the_store_stays_down(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FEDTASK_S3_ENDPOINT", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("FEDTASK_STORE_RETRY_SECONDS", "1")
    update = write_update(tmp_path / "u.safetensors", random_model(0), 4)
    code, _, err = run_stage(["aggregate", "--output", "s3://models/agg.safetensors", update], capsys)
    assert code == 3 and "s3://models/agg.safetensors" in err and "Traceback" not in err


def test_aggregate_reads_updates_from_an_s3_prefix(store_server, tmp_path, capsys):
    models = [random_model(i) for i in range(3)]
    for index, model in enumerate(models):
        path = write_update(tmp_path / f"{index}.safetensors", model, index + 1)
        store.write_file(f"s3://fedtask/task/round-0001/updates/d{index:03d}.safetensors", path)
    code, result, err = run_stage(["aggregate", "--output", "s3://fedtask/task/round-0001/aggregate.safetensors",
                                   "--updates-prefix", "s3://fedtask/task/round-0001/updates/"], capsys)
    assert code == 0, err
    assert result["updates"] == 3
    from fedtask_worker.tensors import load_arrays

    store.download("s3://fedtask/task/round-0001/aggregate.safetensors", str(tmp_path / "agg"))
    arrays, meta = load_arrays(str(tmp_path / "agg"))
    expected = sum(w * m["layer.weight"] for w, m in zip([1 / 6, 2 / 6, 3 / 6], models))
    np.testing.assert_allclose(arrays["layer.weight"], expected, rtol=1e-5)
    assert meta["num_samples"] == "6" and meta["stage"] == "aggregate"


def test_local_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    uri = f"file://{tmp_path}/deep/er/model.bin"
    with store.writer(uri) as path:
        with open(path, "wb") as stream:
            stream.write(b"partial")
        assert not os.path.exists(tmp_path / "deep/er/model.bin")  # invisible until complete
    assert (tmp_path / "deep/er/model.bin").read_bytes() == b"partial"
    with pytest.raises(RuntimeError):
        with store.writer(uri) as path:
            open(path, "wb").write(b"broken")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "deep/er/model.bin").read_bytes() == b"partial"
    assert os.listdir(tmp_path / "deep/er") == ["model.bin"]


@pytest.mark.parametrize("uri, message", [("ftp://x/y", "unsupported URI scheme"), ("s3:///key", "no bucket"),
                                          ("", "empty")])
def test_bad_uris_are_named(uri, message):
    with pytest.raises(BadInput, match=message):
        store.parse_uri(uri)
