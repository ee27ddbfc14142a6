"""How the process kubelet resolves a container's environment, volume mounts and command line (pure functions)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fedtask_operator.local.container_config import (
    LocalCommand,
    Mount,
    PodConfigError,
    VolumePlaces,
    container_env,
    env_from_source,
    expand_vars,
    local_command,
    lookup,
    pod_volumes,
    resolve_mount,
    rewrite_paths,
)

SECRETS = {"team/s3": {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}, "shared": {"TOKEN": "t"}}
CONFIG_MAPS = {"team/settings": {"LEVEL": 3}}
PLACES = VolumePlaces(pod_dir=Path("/pods/team/p"), claims_root=Path("/claims"))


def make_pod(volumes=(), **metadata) -> dict:
    return {"metadata": {"name": "p", "namespace": "team", "uid": "u-1", **metadata},
            "spec": {"nodeName": "edge-1", "volumes": list(volumes)}}


def env_of(container: dict, pod: dict | None = None) -> dict:
    return container_env(pod or make_pod(), container, SECRETS, CONFIG_MAPS)


def mount_of(volume: dict, **mount) -> Mount:
    pod = make_pod([volume])
    item = {"name": volume["name"], "mountPath": "/data/", **mount}
    return resolve_mount(item, pod_volumes(pod), pod, PLACES, SECRETS, CONFIG_MAPS)


# --- environment ----------------------------------------------------------------------------------------------

def test_env_values_expand_earlier_variables_and_env_from_comes_first():
    container = {
        "envFrom": [{"secretRef": {"name": "s3"}, "prefix": "S3_"}, {"configMapRef": {"name": "settings"}}],
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "$(A)-$(LEVEL)-$(MISSING)-$$(A)"}],
    }

    assert env_of(container) == {"S3_AWS_ACCESS_KEY_ID": "key", "S3_AWS_SECRET_ACCESS_KEY": "secret", "LEVEL": "3",
                                 "A": "1", "B": "1-3-$(MISSING)-$(A)"}


def test_env_from_a_missing_store_fails_unless_optional():
    assert env_of({"envFrom": [{"secretRef": {"name": "nope", "optional": True}}]}) == {}
    with pytest.raises(PodConfigError) as error:
        env_of({"envFrom": [{"configMapRef": {"name": "nope"}}]})
    assert (error.value.reason, error.value.message) == ("CreateContainerConfigError", 'configmap "nope" not found')


def test_value_from_secret_and_config_map_keys():
    container = {"env": [
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
        {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "nope", "optional": True}}},
    ]}

    assert env_of(container) == {"KEY": "key", "LEVEL": "3"}


@pytest.mark.parametrize(("source", "message"), [
    ({"secretKeyRef": {"name": "nope", "key": "k"}}, 'env X: secret "nope" not found'),
    ({"configMapKeyRef": {"name": "settings", "key": "k"}}, 'env X: couldn\'t find key k in configmap "settings"'),
    ({"somethingNew": {}}, "env X: unsupported valueFrom ['somethingNew']"),
])
def test_value_from_problems_name_the_variable(source, message):
    with pytest.raises(PodConfigError) as error:
        env_from_source(make_pod(), "X", source, SECRETS, CONFIG_MAPS)
    assert (error.value.reason, error.value.message) == ("CreateContainerConfigError", message)


@pytest.mark.parametrize(("path", "value"), [
    ("metadata.name", "p"), ("metadata.namespace", "team"), ("metadata.uid", "u-1"), ("spec.nodeName", "edge-1"),
    ("status.podIP", "127.0.0.1"), ("metadata.labels['app']", "fl"), ("metadata.annotations['none']", ""),
    ("status.unknown", ""),
])
def test_value_from_field_ref(path, value):
    pod = make_pod(labels={"app": "fl"})
    assert env_from_source(pod, "X", {"fieldRef": {"fieldPath": path}}, {}, {}) == value


def test_resource_field_ref_is_empty():
    assert env_from_source(make_pod(), "X", {"resourceFieldRef": {"resource": "limits.cpu"}}, {}, {}) == ""


def test_lookup_prefers_the_pods_namespace_then_the_bare_name():
    store = {"team/x": {"a": 1}, "x": {"a": 2}, "y": {"a": 3}}
    assert lookup(store, make_pod(), "x") == {"a": 1}
    assert lookup(store, make_pod(), "y") == {"a": 3}
    assert lookup(store, make_pod(), "z") is None


def test_kubernetes_variable_expansion():
    assert expand_vars("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"


# --- volumes ----------------------------------------------------------------------------------------------------

def test_empty_dir_and_claims_live_under_their_roots():
    assert mount_of({"name": "scratch", "emptyDir": {}}) == Mount(
        path="/data", volume="scratch", folder=Path("/pods/team/p/volumes/scratch"))
    claim = mount_of({"name": "data", "persistentVolumeClaim": {"claimName": "fedtask-data-edge-1"}}, subPath="x")
    assert claim.folder == Path("/claims/fedtask-data-edge-1")
    assert claim.local_path == Path("/claims/fedtask-data-edge-1/x")


def test_host_paths_map_to_themselves_or_under_a_root():
    volume = {"name": "data", "hostPath": {"path": "/var/lib/fedtask/data", "type": "Directory"}}
    mount = mount_of(volume)
    assert (mount.folder, mount.create, mount.must_exist) == (Path("/var/lib/fedtask/data"), False, True)

    pod = make_pod([{"name": "data", "hostPath": {"path": "/var/lib/x"}}])
    places = VolumePlaces(pod_dir=Path("/p"), claims_root=Path("/c"), host_path_root=Path("/hosts/edge-1"))
    mount = resolve_mount({"name": "data", "mountPath": "/x"}, pod_volumes(pod), pod, places, {}, {})
    assert (mount.folder, mount.create, mount.must_exist) == (Path("/hosts/edge-1/var/lib/x"), True, False)


def test_secret_and_config_map_volumes_carry_their_files():
    assert mount_of({"name": "creds", "secret": {"secretName": "s3"}}).files == (
        ("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"))
    assert mount_of({"name": "cfg", "configMap": {"name": "settings"}}).files == (("LEVEL", "3"),)
    assert mount_of({"name": "cfg", "configMap": {"name": "nope", "optional": True}}).files == ()


@pytest.mark.parametrize(("volume", "mount", "reason", "message"), [
    ({"name": "other", "emptyDir": {}}, {"name": "data"}, "CreateContainerConfigError",
     'volume "data" is not defined'),
    ({"name": "data", "secret": {"secretName": "nope"}}, {}, "FailedMount", 'volume "data": secret "nope" not found'),
    ({"name": "data", "nfs": {"server": "x"}}, {}, "FailedMount", "volume \"data\": unsupported volume type ['nfs']"),
])
def test_volume_problems(volume, mount, reason, message):
    pod = make_pod([volume])
    item = {"name": "data", "mountPath": "/data", **mount}
    with pytest.raises(PodConfigError) as error:
        resolve_mount(item, pod_volumes(pod), pod, PLACES, SECRETS, CONFIG_MAPS)
    assert (error.value.reason, error.value.message) == (reason, message)


# --- command line -----------------------------------------------------------------------------------------------

def test_local_command_rewrites_mount_paths_and_the_termination_message_path():
    container = {"command": ["python", "-m", "w"], "workingDir": "/data",
                 "args": ["--data=/data/x", "--out", "$(OUT)", "/dev/termination-log"]}
    mounts = {"/data": "/local/data", "/tmp": "/local/tmp", "/same": "/same"}

    command = local_command(container, {"OUT": "/data/out"}, mounts, Path("/pod/termination-log"), Path("/pod"))

    assert command == LocalCommand(
        argv=[sys.executable, "-m", "w", "--data=/local/data/x", "--out", "/local/data/out", "/pod/termination-log"],
        env={"OUT": "/local/data/out", "TMPDIR": "/local/tmp"}, cwd="/local/data")


def test_local_command_runs_in_the_pod_folder_and_needs_a_command():
    command = local_command({"command": ["sh", "-c", "true"], "terminationMessagePath": "/result"}, {}, {},
                            Path("/pod/result"), Path("/pod"))
    assert (command.argv, command.cwd) == (["sh", "-c", "true"], "/pod")
    with pytest.raises(PodConfigError) as error:
        local_command({"name": "main"}, {}, {}, Path("/pod/result"), Path("/pod"))
    assert error.value.reason == "Unsupported"


def test_path_rewriting_touches_whole_paths_only():
    rewrites = {"/data": "/x/data", "/dev/termination-log": "/x/result"}
    assert rewrite_paths("--data-dir=/data/sub", rewrites) == "--data-dir=/x/data/sub"
    assert rewrite_paths("/data", rewrites) == "/x/data"
    assert rewrite_paths("/database", rewrites) == "/database"
    assert rewrite_paths("/srv/data", rewrites) == "/srv/data"
    assert rewrite_paths("/dev/termination-log", rewrites) == "/x/result"
