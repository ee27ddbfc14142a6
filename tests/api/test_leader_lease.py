"""The leader lease (kube/lease.py) against the emulated API server: the Lease is real (created, patched with a
resourceVersion precondition), only the clock is the test's, so expiry is exact and the test fast."""
from __future__ import annotations

import asyncio

import pytest

from fedtask_operator.kube.lease import LeaderLease, LeaseApi, LeaseConfig
from tests.support.kube import TEST_USER_AGENT

pytestmark = pytest.mark.api

LEASES = "coordination.k8s.io/v1/leases"
CONFIG = LeaseConfig(name="fedtask-operator", namespace="default", duration=15.0, renew_deadline=10.0, retry=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease_api(cluster) -> LeaseApi:
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    client.user_agent = TEST_USER_AGENT
    return LeaseApi(client, request_timeout=5)


def replicas(cluster, clock) -> tuple[LeaderLease, LeaderLease]:
    return (LeaderLease(lease_api(cluster), CONFIG, identity="replica-a", clock=clock),
            LeaderLease(lease_api(cluster), CONFIG, identity="replica-b", clock=clock))


def holder(cluster) -> str | None:
    lease = cluster.get(LEASES, "default", CONFIG.name)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def test_two_replicas_started_together_exactly_one_leads(cluster):
    clock = Clock()
    a, b = replicas(cluster, clock)

    async def both():
        return await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    results = asyncio.run(both())

    assert sorted(results) == [False, True], results
    leader, other = (a, b) if results[0] else (b, a)
    assert leader.valid() and not other.valid()
    assert holder(cluster) == leader.identity
    # Later attempts change nothing while the leader renews.
    for _ in range(10):
        clock.now += CONFIG.retry
        assert asyncio.run(leader.try_acquire_or_renew())
        assert not asyncio.run(other.try_acquire_or_renew())
    assert holder(cluster) == leader.identity and leader.valid() and not other.valid()


def test_a_paused_leader_stops_acting_and_the_other_takes_over_only_after_the_lease_duration(cluster):
    clock = Clock()
    a, b = replicas(cluster, clock)
    assert asyncio.run(a.try_acquire_or_renew())
    assert not asyncio.run(b.try_acquire_or_renew())  # b starts watching the record now

    # a is paused: it renews nothing. Past its renew deadline it may not write any more...
    clock.now += CONFIG.renew_deadline - 0.1
    assert a.valid()
    clock.now += 0.2
    assert not a.valid()
    # ...while b still waits: the lease duration since b saw the last renewal has not passed.
    assert not asyncio.run(b.try_acquire_or_renew())
    assert holder(cluster) == "replica-a"
    clock.now += CONFIG.duration - CONFIG.renew_deadline
    assert asyncio.run(b.try_acquire_or_renew())
    assert holder(cluster) == "replica-b" and b.valid()
    lease = cluster.get(LEASES, "default", CONFIG.name)
    assert lease["spec"]["leaseTransitions"] == 1

    # a resumes: its renewal finds another holder and it stays fenced.
    assert not asyncio.run(a.try_acquire_or_renew())
    assert not a.valid() and holder(cluster) == "replica-b"


def test_a_stale_renewal_is_refused_by_the_resource_version(cluster):
    """a read the Lease, then b took it over before a's patch arrived: a's patch names the older resourceVersion and
    the API server refuses it (a never holds the Lease at the same time as b)."""
    clock = Clock()
    a, b = replicas(cluster, clock)
    assert asyncio.run(a.try_acquire_or_renew())
    stale = cluster.get(LEASES, "default", CONFIG.name)
    clock.now += CONFIG.duration + 1
    assert not asyncio.run(b.try_acquire_or_renew())  # first sight of a's record: b starts its own wait
    clock.now += CONFIG.duration + 1
    assert asyncio.run(b.try_acquire_or_renew())
    refused = asyncio.run(a.api.patch("default", CONFIG.name, stale["metadata"]["resourceVersion"],
                                      {"holderIdentity": "replica-a"}))
    assert refused is None and holder(cluster) == "replica-b"


def test_release_hands_the_lease_over_at_once(cluster):
    clock = Clock()
    a, b = replicas(cluster, clock)
    assert asyncio.run(a.try_acquire_or_renew())
    asyncio.run(a.release())
    assert not a.valid() and not holder(cluster)
    assert asyncio.run(b.try_acquire_or_renew())  # no lease duration to wait
    assert holder(cluster) == "replica-b"


def test_the_lease_settings_are_checked():
    with pytest.raises(ValueError, match="renew deadline"):
        LeaseConfig(duration=5, renew_deadline=6, retry=1)
    config = LeaseConfig.from_duration("x", "default", 15)
    assert (config.renew_deadline, config.retry) == (10, 2)
