"""Issue 12: path escapes in the local runtime (`fedtask run` and the process kubelet). A claimName that is absolute
or `..`, a hostPath with `..` segments under a host-path root and a `..` subPath left the folder they belong to;
a workdir whose name holds `#` or `?` cut every file:// URI short. Each is refused with the reason, or (the workdir)
handled."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedtask_operator.core.pods import build_init_pod
from fedtask_operator.core.spec import parse_task
from fedtask_operator.local.config import local_runtime_config
from fedtask_operator.local.container_config import PodConfigError, VolumePlaces, pod_volumes, resolve_mount
from fedtask_operator.local.runtime import local_path

PLACES = VolumePlaces(pod_dir=Path("/run/pods/p"), claims_root=Path("/run/claims"),
                      host_path_root=Path("/run/hosts/edge-1"))


def resolve(volume: dict, **mount) -> Path:
    pod = {"metadata": {"name": "p", "namespace": "team"}, "spec": {"volumes": [volume]}}
    item = {"name": volume["name"], "mountPath": "/data", **mount}
    return resolve_mount(item, pod_volumes(pod), pod, PLACES, {}, {}).local_path


@pytest.mark.parametrize("claim", ["/etc", "..", ".", "../other-run", "a/../../x", "a/b", "UPPER", "", "x" * 254])
def test_a_claim_name_that_is_not_a_name_is_refused(claim):
    with pytest.raises(PodConfigError) as error:
        resolve({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
    assert error.value.reason == "FailedMount"
    assert error.value.message.startswith(f'volume "data": claimName {claim!r} is not a claim name')


def test_claim_names_stay_under_the_claims_folder():
    assert resolve({"name": "data", "persistentVolumeClaim": {"claimName": "fedtask-data-edge-1.local"}}) == Path(
        "/run/claims/fedtask-data-edge-1.local")


@pytest.mark.parametrize("path", ["/var/lib/../../../etc", "/..", "/var/lib/fedtask/data/..", "relative/dir"])
def test_a_host_path_that_could_leave_the_host_root_is_refused(path):
    with pytest.raises(PodConfigError) as error:
        resolve({"name": "data", "hostPath": {"path": path}})
    assert error.value.reason == "FailedMount"
    assert error.value.message == (f'volume "data": hostPath {path!r} must be an absolute path without ".." '
                                   "segments")


def test_host_paths_stay_under_the_host_root():
    assert resolve({"name": "data", "hostPath": {"path": "/var/lib/fedtask/data/team/t"}}) == Path(
        "/run/hosts/edge-1/var/lib/fedtask/data/team/t")
    assert resolve({"name": "data", "hostPath": {"path": "/var/lib/a..b"}}) == Path("/run/hosts/edge-1/var/lib/a..b")


@pytest.mark.parametrize("sub_path", ["../../etc", "/etc", "a/../../b"])
def test_a_sub_path_that_leaves_its_volume_is_refused(sub_path):
    with pytest.raises(PodConfigError, match=r"subPath .* must be relative and without \"..\" segments"):
        resolve({"name": "data", "emptyDir": {}}, subPath=sub_path)


@pytest.mark.parametrize("name", ["run#1", "what?now", "100%", "a b#c?d%25e", "naïve"])
def test_a_workdir_with_uri_characters_keeps_every_file_uri_whole(tmp_path, name):
    """The worker reads these URIs with its own parser (fedtask_worker.store.parse_uri): an object written through
    one lands in the workdir, and the runtime finds it there again."""
    from fedtask_worker import store

    workdir = tmp_path / name
    config = local_runtime_config(workdir)
    task = parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "t", "namespace": "team", "uid": "u1"},
                       "spec": {"model": {"name": "mlp"}, "data": {"dataset": "digits"}}})
    args = build_init_pod(task, config)["spec"]["containers"][0]["args"]
    uri = args[args.index("--output") + 1]
    store.write_bytes(uri, b"model")
    expected = workdir / "store" / "team" / "t" / "u1" / "round-0000" / "global.safetensors"
    assert expected.read_bytes() == b"model"
    assert local_path(uri) == expected
    assert store.parse_uri(uri).key == str(expected)
