"""The operator's leader lock: a coordination.k8s.io/v1 Lease that only one replica holds at a time.

Only the holder reconciles (creates and deletes pods, writes statuses, posts events); the others keep their watches
and indexes current and wait. The protocol is client-go's leader election:
- the holder renews the Lease every `renew_seconds` with a patch that names the resourceVersion it read, so two
  replicas that both saw the Lease free cannot both take it (the API server refuses the second patch with 409);
- another replica takes the Lease over only after it has seen the same Lease record (holder and renewTime)
  unchanged for a whole `leaseDurationSeconds` on its *own* monotonic clock (no trust in other machines' clocks);
- the holder counts itself the leader only until `sent + renew_deadline` of its last successful renewal, where
  `sent` is its monotonic time when that renewal was *sent* and `renew_deadline` is shorter than the lease duration.
  A replica that was paused (SIGSTOP, a stalled VM) longer than that finds `valid()` false when it resumes, before
  any write: the reconciler checks `valid()` right before each write batch (the fencing check), and again on the
  worker thread right before each pod create or delete is sent (a request queued for a thread when the process was
  paused goes out only after the pause), and status writes carry the resourceVersion they were planned from (the API
  server refuses a stale one).

The margin between `renew_deadline` and the lease duration is what keeps a holder that is about to lose the Lease
from writing while another replica already acts. A pause can still land between that last check and the request
reaching the server (inside the client library). For pod creates the chart closes that on the server: each pod
carries `term` ("<holderIdentity>/<leaseTransitions>", set right before the send; kube/reconciler.py) and a
ValidatingAdmissionPolicy with this Lease as its param admits it only while that term is current (a late create is
denied, 403 "fedtask leader fence: ..."; the policy reads the Lease through an informer, so a brand-new term can be
denied for a moment and is retried). Not fenced on the server: pod deletes, and operators without the chart's policy;
a second create of a live pod is AlreadyExists, and status writes are version-guarded.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fedtask_operator.core.conditions import format_micro_time

logger = logging.getLogger("fedtask.operator.lease")


def default_identity() -> str:
    """This replica's name in the Lease: the pod name (POD_NAME) or the host name, and a random suffix (a restarted
    process is another holder: it must not inherit the previous process's lease without the wait)."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{secrets.token_hex(4)}"


@dataclasses.dataclass(frozen=True)
class LeaseConfig:
    name: str = "fedtask-operator"
    namespace: str = "default"
    duration: float = 15.0  # seconds another replica waits for a silent holder (leaseDurationSeconds)
    renew_deadline: float = 10.0  # seconds after a renewal was sent that the holder still acts
    retry: float = 2.0  # seconds between renewals (holder) and attempts (others)

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError(f"the lease needs 0 < retry ({self.retry}) < renew deadline ({self.renew_deadline}) < "
                             f"duration ({self.duration})")

    @classmethod
    def from_duration(cls, name: str, namespace: str, duration: float) -> LeaseConfig:
        """client-go's proportions (15/10/2): renew deadline 2/3 of the duration, a retry every 2/15."""
        return cls(name=name, namespace=namespace, duration=duration, renew_deadline=duration * 2 / 3,
                   retry=duration * 2 / 15)


class LeaseApi:
    """The three Lease calls, with the kubernetes client on a worker thread (JSON in, JSON out)."""

    def __init__(self, api_client, request_timeout: float):
        import kubernetes

        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self._exception = kubernetes.client.ApiException
        self._timeout = request_timeout

    async def get(self, namespace: str, name: str) -> dict | None:
        def call():
            try:
                return json.loads(self._api.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self._timeout).data)
            except self._exception as error:
                if error.status == 404:
                    return None
                raise
        return await asyncio.to_thread(call)

    async def create(self, namespace: str, body: dict) -> dict | None:
        """None when someone else created it first (409)."""
        def call():
            try:
                return json.loads(self._api.create_namespaced_lease(
                    namespace, body, _preload_content=False, _request_timeout=self._timeout).data)
            except self._exception as error:
                if error.status == 409:
                    return None
                raise
        return await asyncio.to_thread(call)

    async def patch(self, namespace: str, name: str, resource_version: str, spec: dict) -> dict | None:
        """Merge-patch the spec of exactly that version; None when the Lease changed meanwhile (409)."""
        body = {"metadata": {"resourceVersion": resource_version}, "spec": spec}

        def call():
            try:
                return json.loads(self._api.patch_namespaced_lease(
                    name, namespace, body, _content_type="application/merge-patch+json", _preload_content=False,
                    _request_timeout=self._timeout).data)
            except self._exception as error:
                if error.status == 409:
                    return None
                raise
        return await asyncio.to_thread(call)


class LeaderLease:
    """One replica's side of the leader election (see the module docstring). `run()` loops until cancelled."""

    def __init__(self, api: LeaseApi, config: LeaseConfig, identity: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_acquired: Callable[[], Awaitable[None] | None] | None = None,
                 on_lost: Callable[[], Awaitable[None] | None] | None = None):
        self.api, self.config = api, config
        self.identity = identity or default_identity()
        self.clock = clock
        self.on_acquired, self.on_lost = on_acquired, on_lost
        self._valid_until = -1.0  # monotonic: this replica leads until then (renewal sent + renew deadline)
        self._observed: tuple[str, str, str] | None = None  # (holder, renewTime, resourceVersion) last seen
        self._observed_at = 0.0  # monotonic time the observed record was first seen
        self._leading = False  # what on_acquired/on_lost last announced
        self.transitions = 0  # how often this replica acquired the lease
        self.term: str | None = None  # "<holderIdentity>/<leaseTransitions>" of the Lease as last acquired/renewed

    def valid(self) -> bool:
        """Whether this replica may write now: it holds the Lease and its last renewal is recent enough."""
        return self.clock() < self._valid_until

    def remaining(self) -> float:
        return max(0.0, self._valid_until - self.clock())

    def _spec(self, lease: dict | None, now: datetime, taking: bool) -> dict:
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.config.duration)),
                "renewTime": format_micro_time(now)}
        old = (lease or {}).get("spec") or {}
        if taking:
            spec["acquireTime"] = format_micro_time(now)
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (1 if lease else 0)
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards (and `valid()` until the new deadline)."""
        sent = self.clock()
        lease = await self.api.get(self.config.namespace, self.config.name)
        now = datetime.now(UTC)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                    "spec": self._spec(None, now, taking=True)}
            created = await self.api.create(self.config.namespace, body)
            return self._held(created, sent)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime")), str(lease["metadata"].get("resourceVersion")))
        if record[:2] != (self._observed or ("", "", ""))[:2]:
            self._observed, self._observed_at = record, self.clock()
        if holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.config.duration)
            if holder and self.clock() - self._observed_at < duration:
                self._valid_until = -1.0
                return False  # held, and renewed within a lease duration as far as this replica has seen
        patched = await self.api.patch(self.config.namespace, self.config.name, record[2],
                                       self._spec(lease, now, taking=holder != self.identity))
        return self._held(patched, sent)

    def _held(self, lease: dict | None, sent: float) -> bool:
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            self._valid_until = -1.0
            return False
        spec = lease["spec"]
        self.term = f"{self.identity}/{int(spec.get('leaseTransitions') or 0)}"
        self._observed = (self.identity, str(spec.get("renewTime")), str(lease["metadata"].get("resourceVersion")))
        self._observed_at = self.clock()
        self._valid_until = sent + self.config.renew_deadline
        return True

    async def _announce(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            self.transitions += 1
            logger.warning("leader lease %s/%s acquired by %s", self.config.namespace, self.config.name,
                           self.identity)
        else:
            logger.warning("leader lease %s/%s lost by %s: not acting until it is acquired again",
                           self.config.namespace, self.config.name, self.identity)
        callback = self.on_acquired if leading else self.on_lost
        if callback is not None:
            result = callback()
            if asyncio.iscoroutine(result):
                await result

    async def run(self) -> None:
        """Acquire, renew every `retry` seconds, notice a lost or expired lease; until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self.try_acquire_or_renew(), timeout=self.config.renew_deadline)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the API server is away: the deadline decides, the loop goes on
                logger.warning("leader lease %s/%s: %s", self.config.namespace, self.config.name, error)
            await self._announce(self.valid())
            await asyncio.sleep(self.config.retry)

    async def release(self) -> None:
        """On a clean shutdown: give the Lease up at once (others need not wait a lease duration)."""
        if not self.valid():
            return
        self._valid_until = -1.0
        lease = await self.api.get(self.config.namespace, self.config.name)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            await self.api.patch(self.config.namespace, self.config.name, lease["metadata"]["resourceVersion"],
                                 {"holderIdentity": None, "renewTime": None, "acquireTime": None})
