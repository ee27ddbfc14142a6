"""The emulated API carries a real kopf operator: the three kmock workarounds and the garbage collector hold."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.support.kube import FEDERATEDTASKS, PODS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.api


def test_created_objects_get_server_metadata_and_their_namespace_from_the_url(cluster):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "worker-"},
           "spec": {"containers": [{"name": "main", "image": "busybox"}]}}
    created = cluster.apply(pod)
    name = created["metadata"]["name"]
    assert name.startswith("worker-") and len(name) > len("worker-")
    stored = cluster.get(PODS, "default", name)
    assert stored["metadata"]["namespace"] == "default"
    assert stored["metadata"]["uid"] and stored["metadata"]["creationTimestamp"]
    version = int(stored["metadata"]["resourceVersion"])
    cluster.patch(PODS, "default", name, {"status": {"phase": "Running"}})
    assert int(cluster.get(PODS, "default", name)["metadata"]["resourceVersion"]) > version


def test_a_patch_naming_an_older_resource_version_is_a_conflict(cluster):
    from tests.support.kube import ApiError

    task = cluster.apply({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                          "metadata": {"name": "guarded", "namespace": "default"}, "spec": {}})
    version = task["metadata"]["resourceVersion"]
    cluster.patch(FEDERATEDTASKS, "default", "guarded", {"metadata": {"resourceVersion": version},
                                                         "status": {"message": "first"}}, subresource="status")
    with pytest.raises(ApiError, match="HTTP 409"):
        cluster.patch(FEDERATEDTASKS, "default", "guarded", {"metadata": {"resourceVersion": version},
                                                             "status": {"message": "stale"}}, subresource="status")
    assert cluster.get(FEDERATEDTASKS, "default", "guarded")["status"] == {"message": "first"}


def test_deleting_an_owner_collects_its_dependents(cluster):
    task = cluster.apply({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                          "metadata": {"name": "owner", "namespace": "default"}, "spec": {}})
    owner = {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "name": "owner",
             "uid": task["metadata"]["uid"], "controller": True}
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "owned", "ownerReferences": [owner]},
                   "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unowned"},
                   "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
    cluster.delete(FEDERATEDTASKS, "default", "owner")
    assert cluster.get(PODS, "default", "owned") is None
    assert cluster.get(PODS, "default", "unowned") is not None


def test_a_real_kopf_operator_runs_against_the_emulator(cluster, tmp_path):
    operator = tmp_path / "operator.py"
    operator.write_text(textwrap.dedent("""
        import kopf

        @kopf.on.create("fedtask.io", "v1alpha1", "federatedtasks")
        def created(body, patch, **_):
            patch.status["seen"] = body["metadata"]["uid"]
    """))
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    process = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-n", "default", str(operator)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        task = cluster.apply({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                              "metadata": {"name": "smoke", "namespace": "default"}, "spec": {}})

        def handled():
            """the create handler to patch the status"""
            return (cluster.get(FEDERATEDTASKS, "default", "smoke").get("status") or {}).get("seen")

        assert wait_for(handled, timeout=20) == task["metadata"]["uid"]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "Traceback" not in stderr, stderr
