"""The operator's reconciler (kube/reconciler.py) against an in-memory Kubernetes API (tests/support/reconciler.py:
`FakeKubeApi` stands in for the API server, not for our logic; the kopf indexes are snapshots of its store, stale when
a test says so), and its status merge patch. The planner and the scheduler are the real ones. No kopf, no server.
"""
from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtask_operator.core.conditions import format_time, get_condition
from fedtask_operator.core.planner import Event, Plan
from fedtask_operator.core.pods import RuntimeConfig
from fedtask_operator.core.scheduling.collection import SchedulingConfig
from fedtask_operator.core.scheduling.synthetic import make_node, make_pod
from fedtask_operator.kube.reconciler import (
    KubeApi,
    PodCreationRefused,
    Reconciler,
    StatusConflict,
    build_runtime_config,
    build_status_patch,
)
from tests.support.reconciler import (
    CONFIG,
    INIT_RESULT,
    KEY,
    NODES,
    Events,
    FakeKubeApi,
    make_task,
    merge_patch,
    reconciler_for,
    started_round_one,
)

# ====================================================================================================================
# Reconciler


async def test_a_new_task_gets_its_status_its_init_pod_and_one_event():
    api = FakeKubeApi(make_task())
    reconciler, events = reconciler_for(api)

    await reconciler.request(*KEY, api.views())

    assert api.verbs() == ["patch_task_status", "create_pod"]  # the documented order: status, then pods
    assert (api.status["phase"], api.status["stage"], api.status["round"]) == ("Pending", "Initializing", 0)
    assert api.pod_names() == ["mnist-init"]
    assert events.reasons() == ["Started"]


async def test_the_status_is_patched_only_when_it_changed():
    api = FakeKubeApi(make_task())
    reconciler, events = reconciler_for(api)
    await reconciler.request(*KEY, api.views())
    calls = len(api.calls)

    await reconciler.request(*KEY, api.views())  # the watch delivered our write and the pod: nothing moved

    assert api.calls[calls:] == []
    assert events.reasons() == ["Started"]


async def test_write_status_sends_only_the_difference_and_nothing_when_equal():
    api = FakeKubeApi(make_task())
    reconciler, _ = reconciler_for(api)
    await reconciler.request(*KEY, api.views())
    task = copy.deepcopy(api.tasks[KEY])

    assert await reconciler.write_status(task, copy.deepcopy(task["status"])) is False
    assert api.verbs().count("patch_task_status") == 1

    assert await reconciler.write_status(task, {**task["status"], "message": "hello"}) is True
    assert api.calls[-1] == ("patch_task_status", "mnist", {"message": "hello"})
    assert api.status["message"] == "hello"


async def test_a_finished_stage_s_pod_is_deleted_once_its_result_is_recorded():
    api = FakeKubeApi(make_task())
    reconciler, events = reconciler_for(api)
    await started_round_one(api, reconciler)
    train = ["mnist-r0001-train-d000", "mnist-r0001-train-d001"]
    assert api.pod_names() == ["mnist-init", *train]  # the init result is recorded by this very pass
    assert api.status["devices"][0]["state"] == "Pending"

    await reconciler.request(*KEY, api.views())

    assert api.pod_names() == train
    assert api.calls[-1] == ("delete_pod", "mnist-init")
    assert events.reasons() == ["Started", "RoundStarted"]


async def test_keep_finished_pods_from_the_runtime_config_leaves_finished_pods():
    api = FakeKubeApi(make_task())
    reconciler, _ = reconciler_for(api, RuntimeConfig(store_base_uri="s3://fedtask/tasks", keep_finished_pods=True))
    await started_round_one(api, reconciler)

    await reconciler.request(*KEY, api.views())

    assert "mnist-init" in api.pod_names()
    assert "delete_pod" not in api.verbs()


def test_clean_pod_policy_none_keeps_finished_pods():
    flags = dict(store_prefix="tasks", store_bucket="fedtask", image="img", image_pull_policy="Always",
                 store_endpoint="minio:9000", store_secure=False, store_region="", store_secret="creds",
                 namespace_credentials=False, store_uri_allow=())
    assert build_runtime_config(SimpleNamespace(clean_pod_policy="None", **flags)).keep_finished_pods
    assert not build_runtime_config(SimpleNamespace(clean_pod_policy="All", **flags)).keep_finished_pods
    assert build_runtime_config(SimpleNamespace(clean_pod_policy="All", **flags)).store_base_uri == \
        "s3://fedtask/tasks"


def test_namespace_credentials_replace_the_shared_secret_in_the_pods():
    flags = dict(store_prefix="tasks", store_bucket="fedtask", image="img", image_pull_policy="Always",
                 store_endpoint="minio:9000", store_secure=False, store_region="", store_secret="",
                 clean_pod_policy="All", namespace_credentials=True, store_uri_allow=("s3://models/public",))
    config = build_runtime_config(SimpleNamespace(**flags))
    assert (config.credentials_secret, config.namespace_credentials) == ("fedtask-store-credentials", True)
    assert config.allowed_uri_prefixes == ("s3://models/public/",)


class Issuer:
    """Stands in for kube.credentials.NamespaceCredentials (the Secret and MinIO user are tested against the real
    MinIO in tests/api/test_namespace_credentials.py): answers with `problem`, and records the namespaces asked."""

    def __init__(self, problem: str | None = None):
        self.problem, self.asked = problem, []

    async def ensure(self, namespace: str) -> str | None:
        self.asked.append(namespace)
        return self.problem


async def test_pods_wait_for_their_namespace_s_store_credentials_with_a_stalled_condition_and_an_event():
    api = FakeKubeApi(make_task())
    reconciler, events = reconciler_for(api)
    reconciler.store_credentials = Issuer("store credentials of namespace default not issued: connection refused")

    await reconciler.request(*KEY, api.views())

    assert api.pod_names() == []
    stalled = get_condition(api.status["conditions"], "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "PodCreationFailed")
    assert "store credentials of namespace default not issued: connection refused" in stalled["message"]
    assert ("PodCreationFailed", "Warning") in events.posted

    issued, _ = reconciler_for(api)  # issued now (a restarted operator holds no backoff)
    issued.store_credentials = Issuer()
    await issued.request(*KEY, api.views())
    await issued.request(*KEY, api.views())
    assert api.pod_names() == ["mnist-init"] and issued.store_credentials.asked[0] == "default"
    assert get_condition(api.status["conditions"], "Stalled") is None


async def test_a_task_with_its_own_store_secret_does_not_wait_for_namespace_credentials():
    api = FakeKubeApi(make_task(storage={"secretRef": {"name": "own-keys"}}))
    reconciler, _ = reconciler_for(api)
    reconciler.store_credentials = Issuer("unreachable")
    await reconciler.request(*KEY, api.views())
    assert api.pod_names() == ["mnist-init"] and reconciler.store_credentials.asked == []


async def test_applying_tolerates_pods_that_already_exist_or_are_already_gone():
    api = FakeKubeApi(make_task())
    reconciler, _ = reconciler_for(api)
    await reconciler.request(*KEY, api.views())
    existing = copy.deepcopy(api.pods[("default", "mnist-init")])
    api.pods[("default", "mnist-init")]["status"] = {"phase": "Running"}
    fresh = {**copy.deepcopy(existing), "metadata": {**existing["metadata"], "name": "mnist-other"}}
    plan = Plan(create=[existing, fresh], delete=["mnist-gone"], status=api.status,
                events=[Event("Normal", "Tested", "a test event")])

    applied = await reconciler.apply(api.tasks[KEY], plan)

    assert (applied.status_written, applied.created, applied.deleted) == (False, 1, 0)
    assert api.pods[("default", "mnist-init")]["status"] == {"phase": "Running"}, "an existing pod is left alone"
    assert api.pod_names() == ["mnist-init", "mnist-other"]


async def test_our_own_write_is_planned_from_while_the_index_lags_behind_it():
    api = FakeKubeApi(make_task())
    reconciler, events = reconciler_for(api)
    stale = api.views()  # the task without status, no pods: the watch has delivered nothing of what follows
    await reconciler.request(*KEY, stale)

    await reconciler.request(*KEY, stale)

    # Planning from the stale task would start it again: a second status write and a second "Started" event.
    status_writes = [call for call in api.calls if call[0] == "patch_task_status"]
    assert [patch != {} for _, _, patch in status_writes] == [True, False]  # then the creation's version check
    assert events.reasons() == ["Started"]
    assert api.verbs().count("create_pod") == 2  # the init pod is not in the stale index: created again, exists


async def test_a_newer_version_in_the_index_wins_over_our_write():
    api = FakeKubeApi(make_task())
    reconciler, events = reconciler_for(api)
    await reconciler.request(*KEY, api.views())
    api.tasks[KEY]["spec"]["suspend"] = True  # the user suspends the task after our write
    api.tasks[KEY]["metadata"]["resourceVersion"] = "999"

    await reconciler.request(*KEY, api.views())

    assert api.status["phase"] == "Suspended"
    assert events.reasons() == ["Started", "Suspended"]


@pytest.mark.parametrize("clusterwide", [True, False])
async def test_resource_accounting_reads_the_pod_watch_in_both_modes_without_listing_pods(clusterwide):
    """A namespaced operator accounts for the pods of every namespace from the pod watch's summaries (it watches
    pods cluster-wide, kube/pod_watch.py), as a cluster-wide one does: no list of every pod per scheduling pass.
    Here another namespace's pods fill both nodes' CPU: the task must wait for them, in either mode."""
    api = FakeKubeApi(make_task(devices={"count": 4, "perRound": 2, "resources": {"requests": {"cpu": "1"}}}))
    reconciler, _ = reconciler_for(api, clusterwide=clusterwide)
    await reconciler.request(*KEY, api.views())
    api.succeed("mnist-init", INIT_RESULT)
    busy = [make_pod(f"web-{node['metadata']['name']}", node["metadata"]["name"], {"cpu": "4"}, namespace="apps")
            for node in NODES]
    views = api.views()
    views.pods = [*views.pods, *busy]  # as the pod watch holds them: only the task's pods are in the API fake

    await reconciler.request(*KEY, views)

    assert api.status["stage"] == "Scheduling"  # round 1 waits: no room on either node
    assert "0 of 2 nodes qualify: 2 short of cpu (0 free, 1 requested)" in api.status["message"]
    assert not [name for name in api.pod_names() if "-train-" in name]
    assert "list_all_pods" not in api.verbs()


def finished_task(ttl: int) -> dict:
    task = make_task(ttlSecondsAfterFinished=ttl)
    task["status"] = {"phase": "Succeeded", "round": 3, "stage": "Publishing", "observedGeneration": 1,
                      "completionTime": format_time(datetime.now(UTC))}
    return task


async def test_a_task_past_its_ttl_is_deleted():
    api = FakeKubeApi(finished_task(ttl=0))
    reconciler, _ = reconciler_for(api)

    await reconciler.request(*KEY, api.views())

    assert api.verbs() == ["delete_task"]
    assert KEY not in api.tasks


async def test_the_reconciler_comes_back_after_requeue_after():
    # completionTime has second precision: 1-2 s of the ttl are left, the plan asks to be planned again then
    api = FakeKubeApi(finished_task(ttl=2))
    reconciler, _ = reconciler_for(api)

    await reconciler.request(*KEY, api.views())
    assert KEY in api.tasks, "the ttl has not passed yet"
    assert api.calls == []

    await asyncio.wait_for(api.task_deleted.wait(), timeout=10)  # no event arrives: only the requeue comes back
    assert api.verbs() == ["delete_task"]


def node_task(name: str, priority: int = 0) -> dict:
    """A hostPath task (devices are the nodes) that needs one device per round."""
    task = make_task(data={"dataset": "digits", "source": "hostPath"}, devices={"perRound": 1},
                     scheduling={"priority": priority})
    task["metadata"].update(name=name, uid=f"uid-{name}")
    return task


async def initialised(api: FakeKubeApi, reconciler: Reconciler, name: str) -> None:
    await reconciler.request("default", name, api.views())
    api.succeed(f"{name}-init", INIT_RESULT)


async def test_tasks_ready_within_the_collection_window_share_one_decision_and_priorities_hold_inside_it():
    # One device node; "low" is ready first, "high" (higher priority) a moment later, "busy" still initialises
    # (it could join): the period collects both and gives the node to "high"; before, "low" took it at once.
    api = FakeKubeApi(node_task("low"), node_task("high", priority=5), node_task("busy"))
    reconciler = Reconciler(api, CONFIG, True, Events(), SchedulingConfig(collection_window=30.0))
    one_node = [make_node("node-a")]
    for name in ("low", "high", "busy"):
        await reconciler.request("default", name, api.views(one_node))
    api.succeed("low-init", INIT_RESULT)
    await reconciler.request("default", "low", api.views(one_node))
    low = api.tasks[("default", "low")]["status"]
    assert low["stage"] == "Scheduling" and "period" not in low  # collecting: no decision yet
    assert not [name for name in api.pod_names() if "-train-" in name]

    api.succeed("high-init", INIT_RESULT)
    await reconciler.request("default", "high", api.views(one_node))  # still within the window: collects on
    assert api.tasks[("default", "high")]["status"]["stage"] == "Scheduling"
    api.succeed("busy-init", INIT_RESULT)
    await reconciler.request("default", "busy", api.views(one_node))  # every task is in: the decision is due now

    statuses = {name: api.tasks[("default", name)]["status"] for name in ("low", "high", "busy")}
    assert {name: status.get("period") for name, status in statuses.items()} == {"low": 1, "high": 1, "busy": 1}
    assert statuses["high"]["stage"] == "Training" and statuses["high"]["currentRound"]["period"] == 1
    assert statuses["low"]["stage"] == statuses["busy"]["stage"] == "Scheduling"
    assert "higher-priority tasks hold 1 of them (default/high: 1)" in statuses["low"]["message"]
    assert [name for name in api.pod_names() if "-train-" in name] == ["high-r0001-train-node-a"]
    assert not reconciler._running  # every task of the decision was released


async def test_the_next_period_number_survives_a_restart():
    api = FakeKubeApi(node_task("a"))
    reconciler, _ = reconciler_for(api)
    await initialised(api, reconciler, "a")
    await reconciler.request("default", "a", api.views())
    assert api.tasks[("default", "a")]["status"]["period"] == 1
    api.tasks[("default", "a")]["status"]["period"] = 41  # what an earlier operator left in the status
    api.tasks[("default", "a")]["status"]["stage"] = "Scheduling"
    api.tasks[("default", "a")]["status"]["devices"] = []
    restarted, _ = reconciler_for(api)
    await restarted.request("default", "a", api.views())
    assert api.tasks[("default", "a")]["status"]["period"] == 42


async def test_forget_cancels_the_requeue():
    api = FakeKubeApi(finished_task(ttl=2))
    reconciler, _ = reconciler_for(api)
    await reconciler.request(*KEY, api.views())

    reconciler.forget(*KEY)  # the task was deleted

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(api.task_deleted.wait(), timeout=3)


async def test_a_replica_resuming_from_an_older_version_applies_nothing_of_its_plan():
    api = FakeKubeApi(make_task())
    active, _ = reconciler_for(api)
    paused, paused_events = reconciler_for(api)
    await active.request(*KEY, api.views())
    api.succeed("mnist-init", INIT_RESULT)
    seen_before_pausing = api.views()  # init finished, not yet recorded
    await active.request(*KEY, api.views())  # round 1 starts
    await active.request(*KEY, api.views())  # the init pod goes
    gone = next(name for name in api.pod_names() if "-train-" in name)
    api.pods.pop(("default", gone))  # a train pod went away meanwhile (e.g. its node died)
    status, calls = copy.deepcopy(api.status), len(api.calls)

    await paused.request(*KEY, seen_before_pausing)  # it resumes and plans from what it saw

    # Unguarded, it would write round 1's start again (another RoundStarted) and create pods from an old plan.
    assert api.verbs()[calls:] == ["patch_task_status"], "the refused status write stops the plan"
    assert api.status == status
    assert paused_events.posted == []
    assert gone not in api.pod_names()
    await paused.request(*KEY, api.views())  # once the watch delivered the newer version, it plans from it
    assert gone in api.pod_names()


POD_SECURITY = 'pods "mnist-init" is forbidden: violates PodSecurity "restricted:latest": hostPath volumes'


async def test_a_refused_pod_creation_is_a_stalled_condition_and_an_event_and_waits_for_a_backoff():
    api = FakeKubeApi(make_task())
    api.refuse = (403, POD_SECURITY)
    reconciler, events = reconciler_for(api)

    await reconciler.request(*KEY, api.views())  # no exception: the refusal is reported, not retried at once

    stalled = get_condition(api.status["conditions"], "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "PodCreationFailed")
    assert "pod mnist-init: 403 " + POD_SECURITY in stalled["message"]
    assert api.status["phase"] == "Pending" and api.status["message"] == stalled["message"]
    assert ("PodCreationFailed", "Warning") in events.posted
    assert any(POD_SECURITY in message for message in events.messages)
    creations = api.verbs().count("create_pod")
    assert creations == 1

    await reconciler.request(*KEY, api.views())  # a pod event or the resync timer, within the backoff
    assert api.verbs().count("create_pod") == creations

    api.refuse = None  # the policy was relaxed; a restarted operator holds no backoff in memory
    restarted, _ = reconciler_for(api)
    await restarted.request(*KEY, api.views())
    assert api.pod_names() == ["mnist-init"]
    await restarted.request(*KEY, api.views())
    assert get_condition(api.status["conditions"], "Stalled") is None
    assert api.status["phase"] == "Pending"


async def test_pod_creations_refused_past_the_give_up_time_fail_the_task_with_the_server_s_message():
    api = FakeKubeApi(make_task())
    api.refuse = (403, 'pods "mnist-init" is forbidden: exceeded quota: compute, requested: cpu=1, limited: cpu=0')
    reconciler, _ = reconciler_for(api)
    await reconciler.request(*KEY, api.views())
    # the first refusal was 11 minutes ago (kept in the status); the operator restarted since
    stalled = get_condition(api.status["conditions"], "Stalled")
    stalled["lastTransitionTime"] = format_time(datetime.fromtimestamp(datetime.now(UTC).timestamp() - 660, UTC))
    restarted, events = reconciler_for(api)

    await restarted.request(*KEY, api.views())

    assert api.status["phase"] == "Failed"
    failed = get_condition(api.status["conditions"], "Failed")
    assert failed["reason"] == "PodCreationFailed" and "exceeded quota: compute" in failed["message"]
    assert "TaskFailed" in events.reasons()
    creations = api.verbs().count("create_pod")
    await restarted.request(*KEY, api.views())
    assert api.verbs().count("create_pod") == creations, "a failed task creates nothing"


async def test_a_task_created_again_under_its_name_never_adopts_the_old_task_s_pods():
    api = FakeKubeApi(make_task())
    reconciler, _ = reconciler_for(api)
    await reconciler.request(*KEY, api.views())
    api.succeed("mnist-init", INIT_RESULT)  # the old task's init pod, finished, not yet garbage-collected
    again = make_task()
    again["metadata"]["uid"] = "uid-2"
    api.tasks[KEY] = again  # deleted and created again under the same name
    reconciler.forget(*KEY)

    await reconciler.request(*KEY, api.views())

    # the old pod's result is not the new task's: the new task initializes itself
    assert (api.status["stage"], api.status["round"]) == ("Initializing", 0)
    assert ("delete_pod", "mnist-init") in api.calls, "the old task's pod in the way is deleted"
    await reconciler.request(*KEY, api.views())
    owners = [ref["uid"] for ref in api.pods[("default", "mnist-init")]["metadata"]["ownerReferences"]]
    assert owners == ["uid-2"]
    assert api.pods[("default", "mnist-init")]["status"] == {"phase": "Pending"}


# ====================================================================================================================
# KubeApi: AlreadyExists and NotFound are answers, not errors


class _ApiException(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status
        self.reason = "Forbidden"
        self.body = json.dumps({"kind": "Status", "code": status, "message": f"status {status} from the server"})


class _FailingClient:
    """kubernetes' CoreV1Api / CustomObjectsApi answering every call with one HTTP status."""

    def __init__(self, status: int):
        self.status = status

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise _ApiException(self.status)
        return call


def kube_api_answering(status: int) -> KubeApi:
    api = KubeApi.__new__(KubeApi)  # without loading a kubeconfig: the client objects are replaced
    api._core = api._custom = _FailingClient(status)
    api._exception = _ApiException
    api._timeout = 1.0
    return api


async def test_kube_api_reports_already_exists_and_not_found_as_false():
    assert await kube_api_answering(409).create_pod("default", {"metadata": {"name": "p"}}) is False
    assert await kube_api_answering(404).delete_pod("default", "p") is False
    assert await kube_api_answering(404).delete_task("default", "t") is False
    with pytest.raises(_ApiException):
        await kube_api_answering(500).create_pod("default", {"metadata": {"name": "p"}})
    with pytest.raises(_ApiException):
        await kube_api_answering(403).delete_pod("default", "p")


@pytest.mark.parametrize("status", [400, 403, 422])
async def test_kube_api_reports_a_refused_creation_with_the_server_s_message(status):
    with pytest.raises(PodCreationRefused) as refused:
        await kube_api_answering(status).create_pod("default", {"metadata": {"name": "p"}})
    assert (refused.value.code, refused.value.message) == (status, f"status {status} from the server")


# ====================================================================================================================
# build_status_patch: a JSON merge patch (RFC 7386)


def test_patch_of_equal_statuses_is_empty():
    status = {"phase": "Running", "devices": [{"device": "d0"}], "best": {"accuracy": 0.5}}
    assert build_status_patch(status, copy.deepcopy(status)) == {}


def test_removed_keys_become_null_and_nested_objects_carry_only_their_changes():
    old = {"phase": "Running", "message": "waiting", "best": {"accuracy": 0.5, "round": 1, "uri": "s3://a"}}
    new = {"phase": "Running", "best": {"accuracy": 0.6, "round": 1}}
    assert build_status_patch(old, new) == {"message": None, "best": {"accuracy": 0.6, "uri": None}}


def test_lists_are_replaced_whole():
    old = {"devices": [{"device": "d0", "state": "Pending"}, {"device": "d1", "state": "Pending"}]}
    new = {"devices": [{"device": "d0", "state": "Succeeded"}, {"device": "d1", "state": "Pending"}]}
    assert build_status_patch(old, new) == {"devices": new["devices"]}


def test_a_value_that_changes_type_is_sent_whole():
    assert build_status_patch({"model": "s3://a"}, {"model": {"uri": "s3://a"}}) == {"model": {"uri": "s3://a"}}
    assert build_status_patch({"model": {"uri": "s3://a"}}, {"model": "s3://a"}) == {"model": "s3://a"}


# JSON values without null: in a merge patch null means "remove", so a status never holds it (the planner drops keys)
_SCALARS = st.one_of(st.booleans(), st.integers(-5, 5), st.sampled_from(["", "a", "b", "Running"]),
                     st.floats(allow_nan=False, allow_infinity=False, width=32))
_KEYS = st.sampled_from(["phase", "round", "best", "devices", "uri", "accuracy", "x"])


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4)


_JSON = st.recursive(_SCALARS, _containers, max_leaves=12)
_STATUS = st.dictionaries(_KEYS, _JSON, max_size=5)


@settings(max_examples=300, deadline=None)
@given(old=_STATUS, new=_STATUS)
def test_applying_the_patch_to_the_old_status_gives_the_new_one(old, new):
    patch = build_status_patch(old, new)
    assert merge_patch(old, patch) == new
    assert json.loads(json.dumps(patch)) == patch  # what is sent over the wire
    if old == new:
        assert patch == {}



async def test_creations_planned_from_an_older_version_without_a_status_change_are_refused():
    api = FakeKubeApi(make_task())
    reconciler, _ = reconciler_for(api)
    await reconciler.request(*KEY, api.views())  # started: the init pod exists
    planned_from = copy.deepcopy(api.tasks[KEY])
    init_pod = api.pods.pop(("default", "mnist-init"))  # finished and deleted by a newer pass...
    await api.patch_task_status(*KEY, {"message": "a newer status"})  # ...which moved the task on

    # A plan from the older version changes no status, so only the version check guards its creation.
    plan = Plan(create=[init_pod], status=planned_from["status"])
    with pytest.raises(StatusConflict):
        await reconciler.apply(planned_from, plan)
    assert ("default", "mnist-init") not in api.pods

    applied = await reconciler.apply(copy.deepcopy(api.tasks[KEY]), plan)  # from the current version: created
    assert applied.created == 1
