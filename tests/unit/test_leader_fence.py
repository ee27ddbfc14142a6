"""The leader fence at the moment a pod write is sent, not only when its batch starts. A replica paused (SIGSTOP, a
stalled VM) after its batch passed the fence but before the create or delete went out sends it when it resumes, long
after its lease ran out: found by `benchmarks/faults.py --target operator --replicas 2`, where such a late create
recreated a finished round's train pod (`r0001-train-d001-a1`, which then ran a second time until the new leader
deleted it). The Lease and the Kubernetes API here are in-memory stand-ins for the API server; the lease logic and the
reconciler are the product's, with a test clock."""
from __future__ import annotations

import asyncio
import copy

import pytest

from fedtask_operator.kube.lease import LeaderLease, LeaseConfig
from fedtask_operator.kube.reconciler import FENCE_RETRY_SECONDS
from tests.support.reconciler import KEY, FakeKubeApi, make_task, reconciler_for

CONFIG = LeaseConfig(name="fedtask-operator", namespace="default", duration=6.0, renew_deadline=4.0, retry=0.8)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseStore:
    """The Lease as the API server keeps it: create once, patch only the version read (None on conflict)."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0

    async def get(self, namespace: str, name: str) -> dict | None:
        return copy.deepcopy(self.lease)

    async def create(self, namespace: str, body: dict) -> dict | None:
        if self.lease is not None:
            return None
        self.version += 1
        self.lease = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.lease)

    async def patch(self, namespace: str, name: str, resource_version: str, spec: dict) -> dict | None:
        if self.lease is None or self.lease["metadata"]["resourceVersion"] != resource_version:
            return None
        self.version += 1
        self.lease["spec"].update(spec)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class PausedBeforeSending(FakeKubeApi):
    """The API server, seen by a replica that is paused for `pause` seconds right before each pod write leaves it
    (after its batch passed the fence): the clock moves on, the lease runs out meanwhile."""

    def __init__(self, clock: Clock, pause: float, *tasks: dict):
        super().__init__(*tasks)
        self.clock, self.pause = clock, pause

    async def create_pod(self, namespace, manifest, guard=None):
        self.clock.now += self.pause
        return await super().create_pod(namespace, manifest, guard)

    async def delete_pod(self, namespace, name, guard=None):
        self.clock.now += self.pause
        return await super().delete_pod(namespace, name, guard)


async def leading_reconciler(api: FakeKubeApi, clock: Clock):
    lease = LeaderLease(LeaseStore(), CONFIG, identity="replica-a", clock=clock)
    assert await lease.try_acquire_or_renew() and lease.valid()
    reconciler, events = reconciler_for(api)
    reconciler.leader = lease
    return reconciler, lease


async def test_a_pod_creation_that_goes_out_after_the_lease_ran_out_is_not_sent():
    clock = Clock()
    api = PausedBeforeSending(clock, CONFIG.duration * 2, make_task())
    reconciler, lease = await leading_reconciler(api, clock)

    await reconciler.request(*KEY, api.views())

    assert "patch_task_status" in api.verbs()  # the batch started while it led (its status write went out)...
    assert not lease.valid()
    assert "create_pod" not in api.verbs() and api.pod_names() == []  # ...the late creation did not


async def test_a_pod_deletion_that_goes_out_after_the_lease_ran_out_is_not_sent():
    clock = Clock()
    api = FakeKubeApi(make_task())
    reconciler, lease = await leading_reconciler(api, clock)
    await reconciler.request(*KEY, api.views())  # the init pod is created while it leads
    assert api.pod_names() == ["mnist-init"]
    api.succeed("mnist-init", {"uri": "s3://fedtask/tasks/default/mnist/uid-1/round-0000/global.safetensors",
                               "bytes": 10, "seconds": 0.1})
    await reconciler.request(*KEY, api.views())  # round 1 starts: the init result is recorded
    assert await lease.try_acquire_or_renew()
    paused = PausedBeforeSending(clock, CONFIG.duration * 2)
    paused.tasks, paused.pods = api.tasks, api.pods  # the same server, reached by a replica about to be paused
    reconciler.api = paused

    await reconciler.request(*KEY, paused.views())  # the finished init pod would go now

    assert "mnist-init" in paused.pod_names() and "delete_pod" not in paused.verbs()


async def test_while_it_leads_the_writes_go_out():
    clock = Clock()
    api = PausedBeforeSending(clock, 0.5, make_task())  # short stalls, well within the lease
    reconciler, lease = await leading_reconciler(api, clock)

    await reconciler.request(*KEY, api.views())

    assert lease.valid() and api.pod_names() == ["mnist-init"]


# --- the server-side fence (the chart's ValidatingAdmissionPolicy) ---------------------------------------------------

FENCE_MESSAGE = ('pods "mnist-init" is forbidden: ValidatingAdmissionPolicy \'fedtask-leader-fence\' with binding '
                 '\'fedtask-leader-fence\' denied request: fedtask leader fence: pod created in leader term '
                 'replica-a/0 but the Lease default/fedtask-operator is held by replica-b in term 1')


async def test_each_pod_carries_the_lease_term_held_when_it_was_sent():
    clock = Clock()
    api = FakeKubeApi(make_task())
    reconciler, lease = await leading_reconciler(api, clock)
    store = lease.api
    store.lease["spec"]["leaseTransitions"] = 4  # earlier holders; this replica's renewal keeps the term
    assert await lease.try_acquire_or_renew()

    await reconciler.request(*KEY, api.views())

    annotations = api.pods[("default", "mnist-init")]["metadata"]["annotations"]
    assert annotations == {"fedtask.io/leader-term": "replica-a/4",
                           "fedtask.io/leader-lease": "default/fedtask-operator"}
    assert api.pods[("default", "mnist-init")]["metadata"]["labels"]["fedtask.io/leader-fenced"] == "true"


async def test_a_standalone_operator_s_pods_carry_no_term():
    api = FakeKubeApi(make_task())
    reconciler, _ = reconciler_for(api)
    await reconciler.request(*KEY, api.views())
    metadata = api.pods[("default", "mnist-init")]["metadata"]
    assert "annotations" not in metadata and "fedtask.io/leader-fenced" not in metadata["labels"]


NO_LEASE_MESSAGE = ('The pods "mnist-init" is invalid: : ValidatingAdmissionPolicy \'fedtask-fedtask-leader-fence\' '
                    'with binding \'fedtask-fedtask-leader-fence\' denied request: failed to configure binding: no '
                    'params found for policy binding with `Deny` parameterNotFoundAction')


@pytest.mark.parametrize("denial", [(403, FENCE_MESSAGE), (422, NO_LEASE_MESSAGE)], ids=["stale-term", "no-lease"])
async def test_a_create_the_fence_denies_means_the_lease_was_lost_not_a_refused_pod(denial):
    clock = Clock()
    api = FakeKubeApi(make_task())
    api.refuse = denial
    lease = LeaderLease(LeaseStore(), CONFIG, identity="replica-a", clock=clock)
    assert await lease.try_acquire_or_renew()
    reconciler, events = reconciler_for(api)
    reconciler.leader = lease

    await reconciler.request(*KEY, api.views())
    assert "PodCreationFailed" not in events.reasons() and not any(denial[1] in m for m in events.messages)

    assert api.verbs().count("create_pod") == 1
    status = api.tasks[KEY].get("status") or {}
    assert not any(c.get("reason") == "PodCreationFailed" for c in status.get("conditions") or []), status
    assert KEY in reconciler._deferred  # handed on as NotLeader: done once this replica leads again
    api.refuse = None  # the API server's policy now sees this replica's term: the create is retried by itself
    await asyncio.sleep(FENCE_RETRY_SECONDS + 0.5)  # (the replica still holds the Lease: not left to the resync)
    assert api.pod_names() == ["mnist-init"]
