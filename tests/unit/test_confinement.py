"""Issue 12, confinement: what a task may ask of the nodes its pods run on (host paths, tolerations, priority classes,
service accounts, runtime classes, schedulers), the operator's settings for it, and the planner refusing a task
outside them."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fedtask_operator.core.confinement import Confinement, ConfinementSettingError, confinement_errors
from fedtask_operator.core.planner import Observed, plan_task
from fedtask_operator.core.pods import RuntimeConfig, build_publish_pod, build_train_pod
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.spec import parse_task
from fedtask_operator.kube.cli import parse_config
from fedtask_operator.kube.reconciler import build_runtime_config


def task_object(spec: dict, name: str = "t", namespace: str = "team-a") -> dict:
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": name, "namespace": namespace, "uid": "u1", "generation": 1},
            "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}, **spec}}


def errors_of(spec: dict, confinement: Confinement | None = None) -> dict[str, str]:
    found = confinement_errors(parse_task(task_object(spec)).spec, confinement or Confinement())
    return {error.path: error.message for error in found}


HOST = {"data": {"dataset": "digits", "source": "hostPath", "hostPath": "/var/lib/fedtask/data"}}


# --- host paths ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/var/lib/fedtask/data", "/var/lib/fedtask", "/var/lib/fedtask/a/b/"])
def test_host_paths_under_the_default_prefix_pass(path):
    assert errors_of({"data": {"dataset": "digits", "source": "hostPath", "hostPath": path}}) == {}


@pytest.mark.parametrize("path, words", [
    ("/", "outside the operator's allowed host path prefixes (/var/lib/fedtask)"),
    ("/etc", "outside"),
    ("/var/lib/fedtaskevil", "outside"),  # a prefix is a directory, not a string prefix
    ("/var/lib/fedtask/../../etc", "without '.', '..' or empty segments"),
    ("/var/lib/fedtask/./x", "without '.', '..' or empty segments"),
    ("/var/lib/fedtask//x", "without '.', '..' or empty segments"),
])
def test_host_paths_outside_the_prefixes_are_refused_naming_the_field(path, words):
    data = errors_of({"data": {"dataset": "digits", "source": "hostPath", "hostPath": path}})
    assert list(data) == ["spec.data.hostPath"] and words in data["spec.data.hostPath"]
    publish = errors_of({"publish": {"toDevices": True, "hostPath": path}})
    assert list(publish) == ["spec.publish.hostPath"] and words in publish["spec.publish.hostPath"]


def test_an_unused_publish_host_path_is_not_checked_and_prefixes_are_settings():
    assert errors_of({"publish": {"toDevices": False, "hostPath": "/etc"}}) == {}
    srv = Confinement(allowed_host_path_prefixes=("/srv/fl",))
    assert errors_of({"data": {"dataset": "digits", "source": "hostPath", "hostPath": "/srv/fl/x"}}, srv) == {}
    assert "spec.data.hostPath" in errors_of(HOST, srv)
    assert "hostPath is disabled" in errors_of(HOST, Confinement(allowed_host_path_prefixes=()))["spec.data.hostPath"]
    with pytest.raises(ConfinementSettingError, match="--allowed-host-path-prefix 'srv'"):
        Confinement(allowed_host_path_prefixes=("srv",))
    with pytest.raises(ConfinementSettingError, match="--allowed-host-path-prefix '/srv/../etc'"):
        Confinement(allowed_host_path_prefixes=("/srv/../etc",))


def test_pods_mount_only_the_tasks_own_subdirectory():
    task = parse_task(task_object({**HOST, "publish": {"toDevices": True, "hostPath": "/var/lib/fedtask/models/"}},
                                  name="mnist"))
    train = build_train_pod(task, RuntimeConfig(), 1, DeviceSlot(device="n1", node="n1"))
    publish = build_publish_pod(task, RuntimeConfig(), "n1", "s3://fedtask/tasks/x/global.safetensors")
    host_paths = lambda pod: [v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v]  # noqa: E731
    assert host_paths(train) == ["/var/lib/fedtask/data/team-a/mnist"]
    assert host_paths(publish) == ["/var/lib/fedtask/models/team-a/mnist"]  # not every tenant's models
    args = publish["spec"]["containers"][0]["args"]
    assert args[args.index("--output") + 1] == "/models/model.safetensors"


# --- tolerations, priority classes, service accounts ----------------------------------------------------------------

def tolerations(*items: dict) -> dict:
    return {"devices": {"tolerations": list(items)}}


def test_the_tolerate_everything_toleration_is_refused_unless_allowed():
    wildcard = tolerations({"operator": "Exists"})
    assert "tolerates every taint" in errors_of(wildcard)["spec.devices.tolerations[0]"]
    assert "tolerates every taint" in errors_of(tolerations({"operator": "Exists", "effect": "NoExecute"}))[
        "spec.devices.tolerations[0]"]
    assert errors_of(wildcard, Confinement(allowed_toleration_keys=("*",))) == {}
    assert "spec.devices.tolerations[0]" in errors_of(wildcard, Confinement(allowed_toleration_keys=("gpu",)))


def test_toleration_keys_default_and_allowlist():
    keyed = tolerations({"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"},
                        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"})
    default = errors_of(keyed)
    assert list(default) == ["spec.devices.tolerations[1].key"] and "control plane" in default[
        "spec.devices.tolerations[1].key"]
    listed = errors_of(keyed, Confinement(allowed_toleration_keys=("dedicated",)))
    assert list(listed) == ["spec.devices.tolerations[1].key"]
    assert "not among the operator's allowed toleration keys (dedicated)" in listed["spec.devices.tolerations[1].key"]
    assert errors_of(keyed, Confinement(allowed_toleration_keys=("dedicated",
                                                                 "node-role.kubernetes.io/control-plane"))) == {}


def test_priority_classes_and_service_accounts_are_refused_unless_listed():
    spec = {"priorityClassName": "system-node-critical", "serviceAccountName": "default-admin"}
    found = errors_of(spec)
    assert "'system-node-critical' is not among the operator's allowed priority classes (none)" in found[
        "spec.priorityClassName"]
    assert "'default-admin' is not among the operator's allowed service accounts (none)" in found[
        "spec.serviceAccountName"]
    allowed = Confinement(allowed_priority_classes=("system-node-critical",),
                          allowed_service_accounts=("default-admin",))
    assert errors_of(spec, allowed) == {}
    assert errors_of({}) == {}  # the defaults ask for nothing


def test_runtime_classes_and_schedulers_are_refused_unless_listed():
    """podTemplate.runtimeClassName picks the node's runtime handler (and its RuntimeClass's tolerations);
    podTemplate.schedulerName hands the pods to a scheduler that may ignore taints and quotas."""
    spec = {"podTemplate": {"runtimeClassName": "runc-unconfined", "schedulerName": "bind-anywhere"}}
    found = errors_of(spec)
    assert list(found) == ["spec.podTemplate.runtimeClassName", "spec.podTemplate.schedulerName"]
    assert "'runc-unconfined' is not among the operator's allowed runtime classes (none)" in found[
        "spec.podTemplate.runtimeClassName"] and "--allowed-runtime-class" in found["spec.podTemplate.runtimeClassName"]
    assert "'bind-anywhere' is not among the operator's allowed scheduler names (default-scheduler)" in found[
        "spec.podTemplate.schedulerName"] and "--allowed-scheduler-name" in found["spec.podTemplate.schedulerName"]
    listed = Confinement(allowed_runtime_classes=("nvidia",), allowed_scheduler_names=("volcano",))
    assert list(errors_of(spec, listed)) == ["spec.podTemplate.runtimeClassName", "spec.podTemplate.schedulerName"]
    assert "(nvidia)" in errors_of(spec, listed)["spec.podTemplate.runtimeClassName"]
    assert "(default-scheduler, volcano)" in errors_of(spec, listed)["spec.podTemplate.schedulerName"]
    assert errors_of({"podTemplate": {"runtimeClassName": "nvidia", "schedulerName": "volcano"}}, listed) == {}
    # the cluster's default scheduler and no runtime class need no listing
    assert errors_of({"podTemplate": {"runtimeClassName": "", "schedulerName": "default-scheduler"}}) == {}
    assert errors_of({"podTemplate": {"schedulerName": ""}}) == {}


def test_the_planner_fails_a_task_with_an_unlisted_scheduler_before_any_pod():
    task = task_object({"podTemplate": {"runtimeClassName": "kata", "schedulerName": "volcano"}})
    plan = plan_task(task, Observed(pods=[], now=datetime(2026, 1, 1, tzinfo=UTC)), RuntimeConfig())
    assert plan.create == [] and plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.podTemplate.runtimeClassName" in failed["message"]
    assert "spec.podTemplate.schedulerName" in failed["message"]
    allowed = RuntimeConfig(confinement=Confinement(allowed_runtime_classes=("kata",),
                                                    allowed_scheduler_names=("volcano",)))
    plan = plan_task(task, Observed(pods=[], now=datetime(2026, 1, 1, tzinfo=UTC)), allowed)
    assert plan.status["phase"] != "Failed" and [p["metadata"]["name"] for p in plan.create] == ["t-init"]
    pod = plan.create[0]["spec"]
    assert pod["runtimeClassName"] == "kata" and pod["schedulerName"] == "volcano"


# --- the planner refuses the task ------------------------------------------------------------------------------------

def test_the_planner_fails_a_task_outside_the_confinement_with_every_field_and_no_pods():
    task = task_object({"data": {"dataset": "digits", "source": "hostPath", "hostPath": "/etc"},
                        "devices": {"tolerations": [{"operator": "Exists"}]}, "priorityClassName": "urgent"})
    plan = plan_task(task, Observed(pods=[], now=datetime(2026, 1, 1, tzinfo=UTC)), RuntimeConfig())
    assert plan.create == [] and plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    for field in ("spec.data.hostPath", "spec.devices.tolerations[0]", "spec.priorityClassName"):
        assert field in failed["message"]
    allowed = RuntimeConfig(confinement=Confinement(allowed_host_path_prefixes=("/",), allowed_toleration_keys=("*",),
                                                    allowed_priority_classes=("urgent",)))
    refused = {**task, "status": plan.status}  # the admin widens the settings: the task starts (it never ran)
    plan = plan_task(refused, Observed(pods=[], now=datetime(2026, 1, 1, tzinfo=UTC)), allowed)
    assert plan.status["phase"] != "Failed" and [p["metadata"]["name"] for p in plan.create] == ["t-init"]


# --- the operator's settings -----------------------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    for name in ("FEDTASK_ALLOWED_HOST_PATH_PREFIXES", "FEDTASK_ALLOWED_TOLERATION_KEYS",
                 "FEDTASK_ALLOWED_PRIORITY_CLASSES", "FEDTASK_ALLOWED_SERVICE_ACCOUNTS",
                 "FEDTASK_ALLOWED_RUNTIME_CLASSES", "FEDTASK_ALLOWED_SCHEDULER_NAMES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_operator_flags_and_environment_set_the_confinement(clean_env):
    assert parse_config([]).confinement == Confinement()
    config = parse_config(["--allowed-host-path-prefix", "/srv/a", "--allowed-host-path-prefix=/srv/b",
                           "--allowed-toleration-key", "gpu", "--allowed-priority-class", "batch",
                           "--allowed-service-account", "fl", "--allowed-runtime-class", "nvidia",
                           "--allowed-runtime-class=kata", "--allowed-scheduler-name", "volcano"])
    assert config.confinement == Confinement(("/srv/a", "/srv/b"), ("gpu",), ("batch",), ("fl",), ("nvidia", "kata"),
                                             ("volcano",))
    assert build_runtime_config(config).confinement == config.confinement
    clean_env.setenv("FEDTASK_ALLOWED_HOST_PATH_PREFIXES", "/x, /y")
    clean_env.setenv("FEDTASK_ALLOWED_TOLERATION_KEYS", "*")
    clean_env.setenv("FEDTASK_ALLOWED_PRIORITY_CLASSES", "low,high")
    clean_env.setenv("FEDTASK_ALLOWED_SERVICE_ACCOUNTS", "")
    clean_env.setenv("FEDTASK_ALLOWED_RUNTIME_CLASSES", "gvisor")
    clean_env.setenv("FEDTASK_ALLOWED_SCHEDULER_NAMES", "volcano, kueue-sched")
    assert parse_config([]).confinement == Confinement(("/x", "/y"), ("*",), ("low", "high"), (), ("gvisor",),
                                                       ("volcano", "kueue-sched"))
    assert parse_config(["--allowed-host-path-prefix", "none"]).confinement.allowed_host_path_prefixes == ()


def test_fedtask_run_takes_the_runtime_class_and_scheduler_flags_of_the_operator():
    """`fedtask run` checks a manifest as the operator would: the same defaults, the same flags."""
    from fedtask_operator.local.cli import build_parser, local_confinement

    parser = build_parser()
    assert local_confinement(parser.parse_args(["task.yaml"])) == Confinement()
    listed = local_confinement(parser.parse_args(["task.yaml", "--allowed-runtime-class", "nvidia",
                                                  "--allowed-scheduler-name=volcano", "--allowed-scheduler-name", "yk",
                                                  "--allowed-host-path-prefix", "/srv"]))
    assert listed == Confinement(("/srv",), None, (), (), ("nvidia",), ("volcano", "yk"))
    assert errors_of({"podTemplate": {"runtimeClassName": "nvidia", "schedulerName": "yk"}}, listed) == {}


def test_a_bad_prefix_setting_is_a_usage_error(clean_env, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--allowed-host-path-prefix", "relative/dir"])
    assert exit_.value.code == 2
    assert "--allowed-host-path-prefix 'relative/dir': must be an absolute path" in capsys.readouterr().err


def test_the_server_side_pods_tolerations_go_through_the_same_allowlist():
    """spec.server.tolerations (issue 15) reach the init/aggregate/adjust pods: one policy for every pod."""
    found = errors_of({"server": {"tolerations": [{"key": "gpu", "operator": "Exists"}, {"operator": "Exists"}]}})
    assert list(found) == ["spec.server.tolerations[1]"] and "tolerates every taint" in found[
        "spec.server.tolerations[1]"]
    everything = Confinement(allowed_toleration_keys=("*",))
    assert errors_of({"server": {"tolerations": [{"operator": "Exists"}]}}, everything) == {}
