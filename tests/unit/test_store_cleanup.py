"""The store cleanup of a deleted task (--cleanup-store; kube/reconciler.py and the handler cleanup_store): only at
the operator's own endpoint, bounded in time on its own threads, and a failure is an event and a kopf retry with a
growing delay. The stores here are real sockets: one that accepts and never answers, one that records connections."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import SimpleNamespace

import kopf
import pytest

from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.kube import handlers
from fedtask_operator.kube.reconciler import StoreCleanupSkipped, cleanup_store_objects, delete_store_objects


class SilentServer:
    """A TCP server that accepts connections and never sends a byte (a store that hangs); counts connections."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()  # unblocks the client threads still reading


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def task_body(name: str = "mnist", **storage) -> dict:
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "generation": 1},
            "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}, "devices": {"count": 2, "perRound": 1},
                     "storage": storage}}


def config(endpoint: str) -> RuntimeConfig:
    return RuntimeConfig(store_base_uri="s3://fedtask/tasks", s3_endpoint=endpoint, s3_secure=False)


def test_the_operator_s_keys_never_go_to_an_endpoint_the_task_chose(silent):
    operator_store = SilentServer()
    try:
        with pytest.raises(StoreCleanupSkipped, match=silent.endpoint):
            delete_store_objects(task_body(endpoint=silent.endpoint), config(operator_store.endpoint), "key", "secret",
                                 deadline=time.monotonic() + 2)
        time.sleep(0.2)
        assert silent.connections == [], "the task-chosen endpoint was contacted"
    finally:
        operator_store.close()


async def test_a_store_that_never_answers_fails_the_cleanup_at_its_deadline(silent):
    with pytest.raises(TimeoutError):
        await cleanup_store_objects(task_body(), config(silent.endpoint), "key", "secret", seconds=1.0)
    assert silent.connections, "the operator's own store was contacted"


@pytest.mark.timing
async def test_a_store_that_never_answers_fails_the_cleanup_within_its_deadline(silent):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await cleanup_store_objects(task_body(), config(silent.endpoint), "key", "secret", seconds=1.0)
    assert time.monotonic() - started < 5.0


async def test_hanging_cleanups_leave_the_default_thread_pool_to_the_api_calls(silent):
    cleanups = [asyncio.ensure_future(cleanup_store_objects(task_body(f"t{i}"), config(silent.endpoint), "key",
                                                            "secret", seconds=3.0)) for i in range(40)]
    await asyncio.sleep(0.5)  # every cleanup is blocked in the store now

    answered = await asyncio.wait_for(asyncio.to_thread(lambda: "api call"), timeout=1.0)

    assert answered == "api call"
    results = await asyncio.gather(*cleanups, return_exceptions=True)
    assert all(isinstance(result, TimeoutError) for result in results), results


async def test_a_failed_cleanup_is_a_warning_event_and_a_retry_with_a_doubling_delay(silent, monkeypatch):
    monkeypatch.setattr("fedtask_operator.kube.reconciler.STORE_CLEANUP_DEADLINE", 1.0)
    posted = []
    memo = SimpleNamespace(reconciler=SimpleNamespace(
        runtime_config=config(silent.endpoint), may_act=lambda: True,
        post_event=lambda body, type_, reason, message: posted.append((type_, reason, message))))
    body = task_body()

    with pytest.raises(kopf.TemporaryError) as retried:
        await handlers.cleanup_store(body=body, memo=memo, logger=None, retry=2)

    assert retried.value.delay == 40.0
    [(type_, reason, message)] = posted
    assert (type_, reason) == ("Warning", "StoreCleanupFailed")
    assert "attempt 3 of 8" in message and "retrying in 40s" in message


async def test_a_task_chosen_endpoint_is_a_warning_event_and_the_deletion_goes_on(silent):
    posted = []
    memo = SimpleNamespace(reconciler=SimpleNamespace(
        runtime_config=config("127.0.0.1:9"), may_act=lambda: True,
        post_event=lambda body, type_, reason, message: posted.append((type_, reason, message))))

    await handlers.cleanup_store(body=task_body(endpoint=silent.endpoint), memo=memo, logger=None, retry=0)

    assert [(type_, reason) for type_, reason, _ in posted] == [("Warning", "StoreCleanupSkipped")]
    assert silent.connections == []


async def test_a_replica_without_the_lease_leaves_the_store_alone_and_retries(silent):
    posted = []
    memo = SimpleNamespace(reconciler=SimpleNamespace(
        runtime_config=config(silent.endpoint), may_act=lambda: False,
        post_event=lambda body, type_, reason, message: posted.append((type_, reason, message))))

    with pytest.raises(kopf.TemporaryError) as retried:
        await handlers.cleanup_store(body=task_body(), memo=memo, logger=None, retry=0)

    assert "not the leader" in str(retried.value)
    assert silent.connections == [] and posted == []
