"""With --namespace-credentials, the deletion of a namespace's last task removes its issued store keys
(Reconciler.forget -> NamespaceCredentials.release, tested against the real MinIO in
tests/api/test_namespace_credentials.py::test_the_namespace_s_user_and_secret_go_with_its_last_task); the deletion
of a task whose namespace still has others removes nothing."""
from __future__ import annotations

import asyncio

from fedtask_operator.kube import reconciler as reconciler_module
from fedtask_operator.kube.reconciler import ClusterView
from tests.support.reconciler import FakeKubeApi, make_task, reconciler_for


class Releases:
    """Stands in for kube.credentials.NamespaceCredentials: records what it was asked to release, and whether the
    namespace was still used when it was asked."""

    def __init__(self):
        self.released: list[tuple[str, bool]] = []

    async def release(self, namespace: str, still_used) -> str | None:
        self.released.append((namespace, still_used()))
        return None


async def test_the_last_task_of_a_namespace_releases_its_keys_and_no_other_does(monkeypatch):
    monkeypatch.setattr(reconciler_module, "RELEASE_DELAY_SECONDS", 0.0)
    reconciler, _ = reconciler_for(FakeKubeApi(make_task()))
    reconciler.store_credentials = Releases()
    tasks = {("team-a", "one"): [{}], ("team-a", "two"): [{}], ("team-b", "three"): [{}]}
    reconciler._views = ClusterView(task_pods={}, nodes=[], pods=[], tasks=tasks)

    del tasks[("team-a", "one")]
    reconciler.forget("team-a", "one")
    await asyncio.sleep(0.05)
    assert reconciler.store_credentials.released == []  # team-a still has a task

    del tasks[("team-a", "two")]
    reconciler.forget("team-a", "two")
    await asyncio.sleep(0.05)
    assert reconciler.store_credentials.released == [("team-a", False)]

    tasks[("team-b", "three")] = []  # an emptied index entry counts as gone too
    reconciler.forget("team-b", "three")
    await asyncio.sleep(0.05)
    assert reconciler.store_credentials.released == [("team-a", False), ("team-b", False)]


async def test_a_task_that_comes_back_before_the_release_keeps_the_keys(monkeypatch):
    monkeypatch.setattr(reconciler_module, "RELEASE_DELAY_SECONDS", 0.05)
    reconciler, _ = reconciler_for(FakeKubeApi(make_task()))
    reconciler.store_credentials = Releases()
    tasks: dict = {}
    reconciler._views = ClusterView(task_pods={}, nodes=[], pods=[], tasks=tasks)
    reconciler.forget("team-a", "one")
    tasks[("team-a", "new")] = [{}]  # created right after
    await asyncio.sleep(0.2)
    assert reconciler.store_credentials.released == [("team-a", True)]  # asked, and told it is still used


async def test_without_namespace_credentials_nothing_is_released():
    reconciler, _ = reconciler_for(FakeKubeApi(make_task()))
    reconciler._views = ClusterView(task_pods={}, nodes=[], pods=[], tasks={})
    reconciler.forget("team-a", "one")
    assert not reconciler._releases
