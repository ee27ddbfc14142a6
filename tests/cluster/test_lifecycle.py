"""A task's life on the real control plane: `kubectl delete ft` removes its pods through kube-controller-manager's
garbage collector (owner references), `ttlSecondsAfterFinished` deletes a finished task (the operator's RBAC allows
it), and an operator killed mid-round (SIGKILL; the node agent restarts its container) finishes the task with every
round exactly once."""
from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from fedtask_operator.core.naming import TASK_LABEL
from tests.support.cluster import (
    NAMESPACE,
    CreationRecorder,
    LocalCluster,
    digits_task,
    operator_deployment,
    operator_pods,
    scale_operator,
    wait_for_phase,
)
from tests.support.waiting import wait_for

# The first test also sets the module's cluster up (and may wait for another session's): a longer timeout.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

def task_pod_names(cluster: LocalCluster, name: str) -> set[str]:
    pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", f"{TASK_LABEL}={name}")["items"]
    return {pod["metadata"]["name"] for pod in pods}


def task_status(cluster: LocalCluster, name: str) -> dict:
    return cluster.get_json("federatedtask", name, "-n", NAMESPACE).get("status") or {}


def remove_finalizer(cluster: LocalCluster, name: str, finalizer: str) -> None:
    """Remove one finalizer, keeping the others (the garbage collector's `orphan`): a JSON patch that tests the list
    it replaces, retried when the list changed in between."""
    for _ in range(10):
        current = cluster.get_json("ft", name, "-n", NAMESPACE)["metadata"].get("finalizers") or []
        if finalizer not in current:
            return
        patch = [{"op": "test", "path": "/metadata/finalizers", "value": current},
                 {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in current if f != finalizer]}]
        if cluster.kubectl("patch", "ft", name, "-n", NAMESPACE, "--type", "json", "-p", json.dumps(patch),
                           check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"could not remove {finalizer} from {name}")


def long_task(name: str, rounds: int = 50) -> str:
    return digits_task(name, rounds, {"count": 3, "perRound": 3,
                                      "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}})


def test_kubectl_delete_removes_the_pods_through_the_garbage_collector(cluster: LocalCluster):
    """With the operator scaled to zero, only kube-controller-manager's garbage collector can remove the pods of a
    deleted task: it does for a background (default) deletion, and orphans them for --cascade=orphan (the control
    that shows the pods stay when nothing collects them). The operator's own part of a deletion (the store-cleanup
    finalizer) is another test's."""
    collected, orphaned = "gc-collected", "gc-orphaned"
    for name in (collected, orphaned):
        cluster.kubectl("apply", "-f", "-", input=long_task(name))
    # Scaled to zero while both train (round 2 or later: the task is well under way), so each keeps pods.
    def training() -> bool:
        pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", "fedtask.io/stage=train")["items"]
        rounds = {(p["metadata"]["labels"][TASK_LABEL], p["metadata"]["labels"].get("fedtask.io/round")) for p in pods}
        return all(any(task == name and int(r or 0) >= 2 for task, r in rounds) for name in (collected, orphaned))
    # The operator works on until its pod is gone and may stop between a round's last pod and the next round's
    # first, leaving a task without pods: then it runs again and is stopped at another moment.
    for _attempt in range(5):
        wait_for(training, timeout=180, interval=0.2, message="both tasks training round 2 or later")
        scale_operator(cluster, 0)
        before = {name: task_pod_names(cluster, name) for name in (collected, orphaned)}
        if all(before.values()):
            break
        scale_operator(cluster, 1)
    try:
        assert all(before.values()), (before, [task_status(cluster, name) for name in (collected, orphaned)])
        pods = cluster.get_json("pods", "-n", NAMESPACE, "-l", f"{TASK_LABEL}={collected}")["items"]
        task_uid = cluster.get_json("federatedtask", collected, "-n", NAMESPACE)["metadata"]["uid"]
        for pod in pods:
            owners = pod["metadata"].get("ownerReferences") or []
            assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [("FederatedTask", task_uid, True)]

        # The operator's store-cleanup finalizer holds the deletions while it is away: an administrator removes it.
        for name, cascade in ((collected, "background"), (orphaned, "orphan")):
            cluster.kubectl("delete", "ft", name, "-n", NAMESPACE, f"--cascade={cascade}", "--wait=false")
            remove_finalizer(cluster, name, "fedtask.io/cleanup-store")  # not the API server's "orphan" one
            wait_for(lambda name=name: cluster.kubectl("get", "ft", name, "-n", NAMESPACE, check=False).returncode != 0,
                     timeout=30, interval=0.5, message=f"{name} gone")
        wait_for(lambda: not task_pod_names(cluster, collected), timeout=90, interval=0.5,
                 message=f"{collected}'s pods gone")

        # The orphan control: the garbage collector removed the owner references and left the pods.
        def orphans():
            items = cluster.get_json("pods", "-n", NAMESPACE, "-l", f"{TASK_LABEL}={orphaned}")["items"]
            return items if all(not p["metadata"].get("ownerReferences") for p in items) else None
        left = wait_for(orphans, timeout=60, interval=0.5, message=f"{orphaned}'s pods orphaned")
        assert {p["metadata"]["name"] for p in left} == before[orphaned]
    finally:
        cluster.kubectl("delete", "pods", "-n", NAMESPACE, "-l", f"{TASK_LABEL}={orphaned}", "--wait=true",
                        check=False, timeout=90)
        scale_operator(cluster, 1)


def test_ttl_seconds_after_finished_deletes_the_finished_task(cluster: LocalCluster):
    name = "ttl-task"
    task = yaml.safe_load(digits_task(name, 1, {"count": 2, "perRound": 2}))
    task["spec"]["ttlSecondsAfterFinished"] = 5
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(task))
    seen: dict = {}

    def gone() -> bool:
        result = cluster.kubectl("get", "federatedtask", name, "-n", NAMESPACE, "-o", "json", check=False)
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return True
        status = json.loads(result.stdout).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            seen.setdefault("phase", status["phase"])
            seen.setdefault("at", time.monotonic())
        return False

    try:
        wait_for(gone, timeout=240, interval=0.5, message=f"{name} deleted")
    except AssertionError:
        raise AssertionError(f"{name}: {seen}\n{cluster.logs()}") from None
    assert seen.get("phase") == "Succeeded", seen
    # Deleted by the operator after the TTL, not before.
    assert time.monotonic() - seen["at"] >= 4.0, seen


def operator_process(cluster: LocalCluster) -> int:
    """The host pid of the operator container's process: `fedtask operator` speaking to this cluster's API server."""
    candidates = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"operator" not in argv or not any(arg.endswith(b"fedtask") for arg in argv[:2]):
            continue
        env = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if b"=" in item)
        if "KUBERNETES_SERVICE_HOST" in env:  # in a pod (one installed cluster per machine: the tests' lock)
            candidates.append(int(proc.name))
    assert len(candidates) == 1, candidates
    return candidates[0]


def test_operator_killed_mid_round_finishes_every_round_exactly_once(cluster: LocalCluster):
    name = "killed-operator"
    rounds = 5
    manifest = digits_task(name, rounds, {"count": 3, "perRound": 3,
                                          "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}})
    restarts_before = sum(s.get("restartCount", 0) for p in operator_pods(cluster)
                          for s in p["status"].get("containerStatuses") or [])
    with CreationRecorder(cluster, name) as recorder:
        cluster.kubectl("apply", "-f", "-", input=manifest)
        # Mid-round: round 2's train pods exist.
        wait_for(lambda: any("-r0002-train-" in pod for pod in recorder.pods), timeout=180, interval=0.5,
                 message="round 2 training")
        os.kill(operator_process(cluster), signal.SIGKILL)
        killed_at = time.monotonic()
        task = wait_for_phase(cluster, name, timeout=300)
    assert task["status"]["phase"] == "Succeeded", task["status"]
    assert not recorder.errors, recorder.errors

    restarts = sum(s.get("restartCount", 0) for p in operator_pods(cluster)
                   for s in p["status"].get("containerStatuses") or [])
    assert restarts > restarts_before, "the operator's container was not restarted"
    history = [entry["round"] for entry in task["status"]["history"]]
    assert history == list(range(1, rounds + 1)), history
    twice = {pod: uids for pod, uids in recorder.uids.items() if len(uids) > 1}
    assert not twice, f"pod names created twice: {twice}"
    stages: dict[tuple[int, str], list[str]] = {}
    for pod_name, pod in recorder.pods.items():
        labels = pod["metadata"]["labels"]
        stage = labels.get("fedtask.io/stage")
        round_number = int(labels.get("fedtask.io/round", 0))
        stages.setdefault((round_number, stage), []).append(pod_name)
    for number in range(1, rounds + 1):
        trains = stages.get((number, "train"), [])
        assert len(trains) == 3, (number, trains)
        assert len(stages.get((number, "aggregate"), [])) == 1, (number, stages)
    print(f"operator killed; task done {time.monotonic() - killed_at:.1f}s later")


def operator_runtime_config(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch):
    """The RuntimeConfig the installed operator builds its pods with: its Deployment's arguments and environment
    through the operator's own kube.cli.parse_config and reconciler.build_runtime_config."""
    from fedtask_operator.kube.cli import parse_config
    from fedtask_operator.kube.reconciler import build_runtime_config

    container = operator_deployment(cluster)["spec"]["template"]["spec"]["containers"][0]
    for variable in container.get("env") or []:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
        elif variable["name"].startswith("AWS_"):  # the store's keys, from a Secret: present, values unneeded
            monkeypatch.setenv(variable["name"], "from-the-secret")
    args = container.get("args") or []
    assert args[:1] == ["operator"], args
    return build_runtime_config(parse_config(args[1:]))


def test_every_pod_and_status_write_the_planner_makes_is_accepted_by_the_api_server(cluster: LocalCluster,
                                                                                     monkeypatch: pytest.MonkeyPatch):
    """The sweep (tests/support/planner_sweep.py): every distinct pod the planner builds (init, train, aggregate,
    adjust, publish; builtin data and node mode; a GPU request; retries), with the operator's own configuration too,
    passes the API server's validation and admission (server-side dry run: nothing is created); every distinct status
    write is applied as the operator applies it (KubeApi.patch_task_status: a merge patch guarded by the
    resourceVersion) to a real FederatedTask, and the server stores exactly the planned status (nothing pruned,
    nothing refused)."""
    import asyncio

    import kubernetes

    from fedtask_operator.kube.reconciler import KubeApi, build_status_patch
    from tests.support.planner import make_task
    from tests.support.planner_sweep import harvest, variant

    started = time.monotonic()
    found = harvest(operator_runtime_config(cluster, monkeypatch), NAMESPACE)
    harvested = time.monotonic() - started
    stages = {pod["metadata"]["labels"].get("fedtask.io/stage") for pod in found.pods}
    assert stages == {"init", "train", "aggregate", "adjust", "publish"}, stages
    assert any("nvidia.com/gpu" in (pod["spec"]["containers"][0]["resources"].get("limits") or {})
               for pod in found.pods), "no pod with a GPU"
    assert any(volume.get("hostPath") for pod in found.pods for volume in pod["spec"].get("volumes") or []), \
        "no node-mode pod"

    core = kubernetes.client.CoreV1Api(cluster.api_client())
    unique_pods = {variant(pod): pod for pod in found.pods}

    def refusal(pod: dict) -> str:
        try:
            core.create_namespaced_pod(pod["metadata"].get("namespace") or "default", pod, dry_run="All",
                                       _preload_content=False)
        except kubernetes.client.ApiException as error:
            return f"{pod['metadata']['name']}: {error.status} {error.body}"
        return ""

    refused = [problem for pod in unique_pods.values() if (problem := refusal(pod))]
    assert not refused, f"{len(refused)} of {len(unique_pods)} pods refused, e.g.:\n" + "\n".join(refused[:5])
    # The control: the dry run does validate. A GPU pod without its limit (the defect a real server found) is refused.
    gpu_pod = copy.deepcopy(next(pod for pod in found.pods
                                 if "nvidia.com/gpu" in pod["spec"]["containers"][0]["resources"].get("limits", {})))
    del gpu_pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert "Limit must be set" in refusal(gpu_pod)
    pods_done = time.monotonic()

    # KubeApi loads the default kubeconfig (KUBECONFIG, read when the kubernetes package is imported): this cluster's
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", cluster.env["KUBECONFIG"])
    name = "api-sweep"
    task = make_task(name)
    task["metadata"] = {"name": name, "namespace": NAMESPACE}
    scale_operator(cluster, 0)  # the statuses written here are the sweep's alone
    try:
        cluster.kubectl("create", "-f", "-", input=json.dumps(task))
        api = KubeApi()

        async def sweep() -> tuple[int, list[str]]:
            stored = cluster.get_json("ft", name, "-n", NAMESPACE)
            problems, seen = [], set()
            for before, after in found.writes:
                patch = build_status_patch(before, after)
                if variant(patch) in seen:
                    continue
                seen.add(variant(patch))
                if (stored.get("status") or {}) != before:  # start from the status this write was planned from
                    stored = await api.patch_task_status(NAMESPACE, name,
                                                         build_status_patch(stored.get("status") or {}, before),
                                                         stored["metadata"]["resourceVersion"])
                    if (stored.get("status") or {}) != before:
                        problems.append(f"stored differs from the written status {json.dumps(before)[:400]}")
                        continue
                try:
                    stored = await api.patch_task_status(NAMESPACE, name, patch,
                                                         stored["metadata"]["resourceVersion"])
                except kubernetes.client.ApiException as error:
                    problems.append(f"refused {json.dumps(patch)[:400]}: {error.status} {error.body[:400]}")
                    stored = cluster.get_json("ft", name, "-n", NAMESPACE)
                    continue
                if (stored.get("status") or {}) != after:
                    problems.append(f"the server stored something else for {json.dumps(patch)[:400]}:\n"
                                    f"{json.dumps(stored.get('status'))[:400]}")
            # The control: a field the CRD does not know is pruned, and the comparison above would see it.
            bogus = await api.patch_task_status(NAMESPACE, name, {"notAStatusField": 1})
            assert "notAStatusField" not in bogus["status"], bogus["status"]
            return len(seen), problems

        count, problems = asyncio.run(sweep())
        assert not problems, f"{len(problems)} of {count} status writes not stored as planned, e.g.:\n" \
            + "\n".join(problems[:5])
    finally:
        cluster.kubectl("delete", "ft", name, "-n", NAMESPACE, "--ignore-not-found", check=False)
        scale_operator(cluster, 1)
    print(f"{len(found.scenarios)} scenarios ({harvested:.1f}s): {len(unique_pods)} distinct pods accepted "
          f"(dry run, {pods_done - started - harvested:.1f}s), {count} distinct status writes stored as planned "
          f"({time.monotonic() - pods_done:.1f}s)")
