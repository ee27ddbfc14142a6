"""The chart's server-side leader fence on the real API server (Kubernetes 1.34): a ValidatingAdmissionPolicy whose
param is the chart's Lease admits a pod annotated with a leader term (`fedtask.io/leader-term`, for the Lease named
in `fedtask.io/leader-lease`) only while that term is the Lease's current one. A stale term (another holder, or the
holder's previous term) is denied with "fedtask leader fence: ..."; a pod without the annotations is always admitted,
also when the Lease does not exist; with the Lease missing, an annotated pod is denied (422, "no params
found"). The policy's param informer
lags a Lease change by a moment: measured here (printed) and bounded."""
from __future__ import annotations

import json
import time

import pytest

from tests.support.cluster import NAMESPACE, LocalCluster, operator_deployment, scale_operator
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

TERM, LEASE, FENCED = "fedtask.io/leader-term", "fedtask.io/leader-lease", "fedtask.io/leader-fenced"
FENCE = "fedtask leader fence:"


def chart_lease(cluster: LocalCluster) -> str:
    return operator_deployment(cluster)["metadata"]["name"]


def pod(name: str, annotations: dict[str, str]) -> str:
    """A pod labelled like a task's that can never run (its nodeSelector matches no node)."""
    return json.dumps({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations,
                                    "labels": {"fedtask.io/task": "fence-test", "fedtask.io/role": "train",
                                               **({FENCED: "true"} if annotations else {})}},
                       "spec": {"nodeSelector": {"fedtask.io/no-such-node": "true"}, "restartPolicy": "Never",
                                "containers": [{"name": "c", "image": "busybox:1", "command": ["true"]}]}})


def create(cluster: LocalCluster, name: str, annotations: dict[str, str]) -> tuple[bool, str]:
    """(admitted, the API server's answer); an admitted pod is deleted again at once."""
    result = cluster.kubectl("create", "-f", "-", input=pod(name, annotations), check=False)
    if result.returncode == 0:
        cluster.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false")
        return True, result.stdout
    return False, result.stderr


def lease_term(cluster: LocalCluster, name: str) -> tuple[str, int] | None:
    result = cluster.kubectl("get", "lease", name, "-n", NAMESPACE, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    spec = json.loads(result.stdout).get("spec") or {}
    return (spec["holderIdentity"], int(spec.get("leaseTransitions") or 0)) if spec.get("holderIdentity") else None


def test_the_fence_denies_stale_terms_and_admits_the_current_one_and_unannotated_pods(cluster: LocalCluster):
    lease = chart_lease(cluster)
    ref = f"{NAMESPACE}/{lease}"
    holder, transitions = wait_for(lambda: lease_term(cluster, lease), timeout=120, interval=0.5,
                                   message="the chart operator to hold its Lease")
    current = {TERM: f"{holder}/{transitions}", LEASE: ref}
    # (b) the current term: admitted (the policy's param informer may not have the Lease yet: retry briefly)
    admitted = wait_for(lambda: create(cluster, "fence-current", current)[0] or None, timeout=30, interval=0.5,
                        message="a pod of the current leader term to be admitted")
    assert admitted
    # (a) stale terms: another holder, and the holder's previous term
    for i, stale in enumerate((f"some-old-replica_1234/{transitions}", f"{holder}/{transitions - 1}")):
        ok, answer = create(cluster, f"fence-stale-{i}", {TERM: stale, LEASE: ref})
        assert not ok and FENCE in answer and "Forbidden" in answer and holder in answer, (stale, answer)
        assert cluster.kubectl("get", "pod", f"fence-stale-{i}", "-n", NAMESPACE, check=False).returncode != 0
    # (c) without the annotations, or for another Lease: not matched, admitted
    assert create(cluster, "fence-none", {})[0]
    assert create(cluster, "fence-other-lease", {TERM: "x/0", LEASE: f"{NAMESPACE}/another-lease"})[0]

    # No Lease at all: the operator gone (it releases the Lease), the Lease deleted.
    scale_operator(cluster, 0)
    cluster.kubectl("delete", "lease", lease, "-n", NAMESPACE, "--ignore-not-found")
    ok, answer = wait_for(lambda: (lambda r: r if not r[0] else None)(create(cluster, "fence-nolease", current)),
                          timeout=30, interval=0.5, message="an annotated pod to be denied without the Lease")
    # the API server answers 422 "no params found" for the binding (the operator takes it as NotLeader too)
    assert not ok and "leader-fence'" in answer and "no params found" in answer, answer
    ok, answer = create(cluster, "fence-none-nolease", {})
    assert ok, answer

    # A new term appears: how long the API server's policy takes to admit it (the informer lag a new leader's first
    # creates can meet).
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease, "namespace": NAMESPACE},
            "spec": {"holderIdentity": "new-leader_1", "leaseDurationSeconds": 15, "leaseTransitions": 7}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(body))
    started, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        ok, answer = create(cluster, f"fence-new-{attempts}", {TERM: "new-leader_1/7", LEASE: ref})
        if ok:
            break
        assert FENCE in answer or "no params found" in answer, answer
        assert time.monotonic() - started < 30, answer
        time.sleep(0.05)
    lag = time.monotonic() - started
    print(json.dumps({"fence_admits_new_term_after_s": round(lag, 3), "attempts": attempts}))
