"""The pod builder: whole Pod dicts (kubespawner style), each one validated against Kubernetes' own schemas."""
from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from fedtask_operator.core.pods import (
    RuntimeConfig,
    build_adjust_pod,
    build_aggregate_pod,
    build_init_pod,
    build_publish_pod,
    build_train_pod,
)
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.spec import parse_task

K8S_VERSIONS = ("1.27.0", "1.37.0")
CLUSTER = RuntimeConfig(image="fedtask-worker:0.1.0", store_base_uri="s3://fedtask/tasks", s3_endpoint="minio:9000",
                        s3_region="us-east-1", credentials_secret="fedtask-s3")
LOCAL = RuntimeConfig(store_base_uri="file:///work/run/store")
BASE = "s3://fedtask/tasks/team-a/mnist/uid-1"
MODEL_DATA = ["--model", "mlp", "--model-args", "{}", "--dataset", "mnist", "--dataset-args", "{}", "--seed", "0"]
OWNER = {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "name": "mnist", "uid": "uid-1",
         "controller": True, "blockOwnerDeletion": True}


def make_task(spec: dict | None = None, status: dict | None = None):
    return parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "mnist", "namespace": "team-a", "uid": "uid-1"},
                       "spec": spec or {}, "status": status or {}})


def expected_pod(name: str, labels: dict, args: list[str], *, resources=None, env_extra=(), extra_spec=None,
                 volumes=(), mounts=(), store_env=True) -> dict:
    env = [{"name": "HOME", "value": "/home/fedtask"}, {"name": "TMPDIR", "value": "/tmp"},
           {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if store_env:
        env += [
            {"name": "FEDTASK_S3_ENDPOINT", "value": "minio:9000"},
            {"name": "FEDTASK_S3_SECURE", "value": "false"},
            {"name": "FEDTASK_S3_REGION", "value": "us-east-1"},
            {"name": "AWS_ACCESS_KEY_ID",
             "valueFrom": {"secretKeyRef": {"name": "fedtask-s3", "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": "fedtask-s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
        ]
    env += list(env_extra)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a", "labels": labels, "ownerReferences": [OWNER]},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "worker",
                "image": "fedtask-worker:0.1.0",
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-m", "fedtask_worker"],
                "args": args,
                "env": env,
                "resources": resources or {},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/fedtask"},
                                 *mounts],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "privileged": False, "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}, *volumes],
            **(extra_spec or {}),
        },
    }


def labels(stage, round_=None, device=None):
    out = {"app.kubernetes.io/managed-by": "fedtask", "fedtask.io/task": "mnist", "fedtask.io/stage": stage}
    if round_ is not None:
        out["fedtask.io/round"] = str(round_)
    if device is not None:
        out["fedtask.io/device"] = device
    return out


def pinned(node):
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}}


def assert_valid(pod: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(copy.deepcopy(pod), version, strict=True)


def test_init_pod():
    pod = build_init_pod(make_task({"model": {"initialUri": "s3://models/warm.safetensors"}}), CLUSTER)

    assert pod == expected_pod(
        "mnist-init", labels("init", 0),
        ["init", "--task", "mnist", "--round", "0", "--result-file", "/dev/termination-log",
         "--output", f"{BASE}/round-0000/global.safetensors", "--initial-uri", "s3://models/warm.safetensors",
         *MODEL_DATA])
    assert_valid(pod)


def test_train_pod_builtin_data_on_a_chosen_node():
    task = make_task({
        "model": {"name": "cnn", "args": {"width": 2}, "seed": 4},
        "data": {"dataset": "digits", "partition": {"scheme": "classes", "classesPerDevice": 1, "seed": 3},
                 "shared": {"fraction": 0.02}},
        "devices": {"count": 10, "resources": {"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 1},
                                               "limits": {"nvidia.com/gpu": 1}},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "training": {"localEpochs": 2, "batchSize": 16, "learningRate": 0.1, "momentum": 0.9, "proximalMu": 0.01},
    })

    pod = build_train_pod(task, CLUSTER, 3, DeviceSlot(device="d007", node="gpu-1"), attempt=1)

    assert pod == expected_pod(
        "mnist-r0003-train-d007-a1", labels("train", 3, "d007"),
        ["train", "--task", "mnist", "--round", "3", "--result-file", "/dev/termination-log",
         "--global", f"{BASE}/round-0002/global.safetensors",
         "--output", f"{BASE}/round-0003/updates/d007.safetensors",
         "--data-source", "builtin", "--partition", "classes", "--alpha", "0.5", "--classes-per-device", "1",
         "--partition-seed", "3", "--device-index", "7", "--device-count", "10", "--shared-fraction", "0.02",
         "--shared-to-devices", "1.0",
         "--local-epochs", "2", "--batch-size", "16", "--learning-rate", "0.1", "--optimizer", "sgd",
         "--momentum", "0.9", "--weight-decay", "0.0", "--proximal-mu", "0.01",
         "--model", "cnn", "--model-args", '{"width":2}', "--dataset", "digits", "--dataset-args", "{}",
         "--seed", "4"],
        resources={"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
                   "limits": {"nvidia.com/gpu": "1"}},
        env_extra=[{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "FEDTASK_TORCH_THREADS", "value": "1"}],
        extra_spec={**pinned("gpu-1"),
                    "tolerations": [{"operator": "Exists", "key": "nvidia.com/gpu", "effect": "NoSchedule"}]})
    assert_valid(pod)


def test_train_pod_shard_count_falls_back_to_status():
    pod = build_train_pod(make_task(status={"shardCount": 4}), LOCAL, 1, DeviceSlot("d002", "n1"))
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--device-count") + 1] == "4"
    with pytest.raises(ValueError, match="builtin data needs shard devices"):
        build_train_pod(make_task(), LOCAL, 1, DeviceSlot("d002", "n1"))


def test_train_pod_host_path_data():
    task = make_task({"data": {"source": "hostPath", "hostPath": "/srv/fl-data"}})

    pod = build_train_pod(task, CLUSTER, 1, DeviceSlot(device="edge-3", node="edge-3"))

    assert pod == expected_pod(
        "mnist-r0001-train-edge-3", labels("train", 1, "edge-3"),
        ["train", "--task", "mnist", "--round", "1", "--result-file", "/dev/termination-log",
         "--global", f"{BASE}/round-0000/global.safetensors",
         "--output", f"{BASE}/round-0001/updates/edge-3.safetensors",
         "--data-source", "dir", "--data-dir", "/data",
         "--local-epochs", "1", "--batch-size", "32", "--learning-rate", "0.1", "--optimizer", "sgd",
         "--momentum", "0.0", "--weight-decay", "0.0", "--proximal-mu", "0.0", *MODEL_DATA],
        extra_spec=pinned("edge-3"),
        volumes=[{"name": "data", "hostPath": {"path": "/srv/fl-data/team-a/mnist", "type": "Directory"}}],
        mounts=[{"name": "data", "mountPath": "/data", "readOnly": True}])
    assert_valid(pod)


def test_train_pod_pvc_data_claim_per_node():
    task = make_task({"data": {"source": "pvc"}})
    pod = build_train_pod(task, CLUSTER, 2, DeviceSlot(device="edge-3", node="edge-3"))

    assert pod["spec"]["volumes"][-1] == {"name": "data", "persistentVolumeClaim": {
        "claimName": "fedtask-data-edge-3", "readOnly": True}}
    assert pod["spec"]["containers"][0]["volumeMounts"][-1] == {"name": "data", "mountPath": "/data",
                                                                 "readOnly": True}
    assert_valid(pod)


def test_aggregate_pod_passes_every_update_and_on_invalid():
    task = make_task({"aggregation": {"strategy": "fedavgm", "serverLearningRate": 0.5}})
    updates = [f"{BASE}/round-0002/updates/d001.safetensors", f"{BASE}/round-0002/updates/d004.safetensors"]

    pod = build_aggregate_pod(task, CLUSTER, 2, updates)

    assert pod == expected_pod(
        "mnist-r0002-aggregate", labels("aggregate", 2),
        ["aggregate", "--task", "mnist", "--round", "2", "--result-file", "/dev/termination-log",
         "--output", f"{BASE}/round-0002/aggregate.safetensors", "--strategy", "fedavgm",
         "--base", f"{BASE}/round-0001/global.safetensors", "--on-invalid", "skip",
         "--state-in", f"{BASE}/round-0001/server-state.safetensors",
         "--state-out", f"{BASE}/round-0002/server-state.safetensors",
         "--server-learning-rate", "0.5", "--server-momentum", "0.9", "--trim-fraction", "0.1", "--byzantine", "0",
         *updates])
    assert_valid(pod)


def test_aggregate_pod_first_round_and_stateless_strategy():
    args = build_aggregate_pod(make_task(), CLUSTER, 1, [])["spec"]["containers"][0]["args"]
    assert "--state-in" not in args and "--state-out" not in args
    args = build_aggregate_pod(make_task({"aggregation": {"strategy": "fedadam"}}), CLUSTER, 1,
                               [])["spec"]["containers"][0]["args"]
    assert "--state-in" not in args
    assert args[args.index("--state-out") + 1].endswith("round-0001/server-state.safetensors")


def test_aggregate_pod_bounds_every_update():
    task = make_task({"aggregation": {"clipNorm": 2.5, "maxSamplesPerUpdate": 5000}})
    updates = [f"{BASE}/round-0002/updates/d001.safetensors", f"{BASE}/round-0002/updates/d004.safetensors"]

    args = build_aggregate_pod(task, CLUSTER, 2, updates, sample_caps={"d004": 700, "d001": 0})["spec"][
        "containers"][0]["args"]

    bounds = args[args.index("--byzantine") + 2:-len(updates)]
    assert bounds == ["--max-samples", "5000", "--sample-caps", "d001=0,d004=700", "--clip-norm", "2.5"]
    assert args[-len(updates):] == updates
    plain = build_aggregate_pod(make_task(), CLUSTER, 2, updates)["spec"]["containers"][0]["args"]
    assert not {"--max-samples", "--sample-caps", "--clip-norm"} & set(plain)


def test_aggregate_pod_splits_many_sample_caps_into_short_arguments():
    caps = {f"d{index:05d}": 60000 for index in range(20000)}

    args = build_aggregate_pod(make_task(), CLUSTER, 2, [], sample_caps=caps)["spec"]["containers"][0]["args"]

    given = [args[index + 1] for index, flag in enumerate(args) if flag == "--sample-caps"]
    assert len(given) > 1 and max(len(value) for value in given) <= 64 * 1024
    assert dict(item.split("=") for value in given for item in value.split(",")) == {
        device: str(cap) for device, cap in caps.items()}


def test_adjust_pod_with_resources_and_pod_options():
    task = make_task({
        "adjustment": {"epochs": 2, "resources": {"requests": {"cpu": 1, "memory": "2Gi"}}},
        "data": {"shared": {"uri": "s3://shared/data.safetensors"}},
        "image": "registry.example/worker:dev", "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccountName": "fl-worker", "priorityClassName": "batch",
    })

    pod = build_adjust_pod(task, CLUSTER, 5, attempt=2)

    expected = expected_pod(
        "mnist-r0005-adjust-a2", labels("adjust", 5),
        ["adjust", "--task", "mnist", "--round", "5", "--result-file", "/dev/termination-log",
         "--input", f"{BASE}/round-0005/aggregate.safetensors", "--output", f"{BASE}/round-0005/global.safetensors",
         "--epochs", "2", "--batch-size", "32", "--learning-rate", "0.05", "--shared-fraction", "0.01",
         "--shared-uri", "s3://shared/data.safetensors", *MODEL_DATA],
        resources={"requests": {"cpu": "1", "memory": "2Gi"}},
        env_extra=[{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "FEDTASK_TORCH_THREADS", "value": "1"}],
        extra_spec={"serviceAccountName": "fl-worker", "priorityClassName": "batch",
                    "imagePullSecrets": [{"name": "regcred"}]})
    expected["spec"]["containers"][0]["image"] = "registry.example/worker:dev"
    assert pod == expected
    assert_valid(pod)


def test_adjust_pod_without_adjustment_still_evaluates():
    args = build_adjust_pod(make_task({"adjustment": {"enabled": False}}), CLUSTER, 1)["spec"]["containers"][0]["args"]
    assert "--no-adjust" in args


def test_publish_pod_writes_to_the_node_host_path():
    task = make_task({"publish": {"toDevices": True, "hostPath": "/opt/models"}}, status={"round": 20})

    pod = build_publish_pod(task, CLUSTER, "edge-1", f"{BASE}/round-0020/global.safetensors")

    assert pod == expected_pod(
        "mnist-publish-edge-1", labels("publish", device="edge-1"),
        ["publish", "--task", "mnist", "--round", "20", "--result-file", "/dev/termination-log",
         "--input", f"{BASE}/round-0020/global.safetensors", "--output", "/models/model.safetensors"],
        extra_spec=pinned("edge-1"),
        volumes=[{"name": "models", "hostPath": {"path": "/opt/models/team-a/mnist", "type": "DirectoryOrCreate"}}],
        mounts=[{"name": "models", "mountPath": "/models"}])
    assert_valid(pod)


def test_local_runtime_gets_file_uris_and_no_s3_env():
    task = make_task({"storage": {"bucket": "cluster-only", "secretRef": {"name": "s3"}}})
    pod = build_init_pod(task, RuntimeConfig(store_base_uri="file:///work/run/store", store_retry_seconds=5.0))

    container = pod["spec"]["containers"][0]
    assert container["args"][container["args"].index("--output") + 1] == \
        "file:///work/run/store/team-a/mnist/uid-1/round-0000/global.safetensors"
    assert container["env"] == [{"name": "HOME", "value": "/home/fedtask"}, {"name": "TMPDIR", "value": "/tmp"},
                                {"name": "PYTHONUNBUFFERED", "value": "1"},
                                {"name": "FEDTASK_STORE_RETRY_SECONDS", "value": "5.0"}]


def test_task_storage_overrides_endpoint_bucket_and_secret():
    task = make_task({"storage": {"bucket": "mine", "prefix": "fl", "endpoint": "s3.example:443",
                                  "secretRef": {"name": "my-creds"}}})
    container = build_init_pod(task, CLUSTER)["spec"]["containers"][0]

    assert container["args"][container["args"].index("--output") + 1] == \
        "s3://mine/fl/team-a/mnist/uid-1/round-0000/global.safetensors"
    env = {e["name"]: e for e in container["env"]}
    assert env["FEDTASK_S3_ENDPOINT"]["value"] == "s3.example:443"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "my-creds"
    assert all("value" not in e for name, e in env.items() if name.startswith("AWS_"))


def test_validator_catches_a_broken_pod():
    pod = build_init_pod(make_task(), CLUSTER)
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": ["not", "a", "quantity"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)
    pod = build_init_pod(make_task(), CLUSTER)
    pod["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)


def test_long_task_names_give_valid_pods():
    task = parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "a" * 80, "namespace": "team-a", "uid": "u"},
                       "spec": {"data": {"source": "hostPath"}}})
    pod = build_train_pod(task, CLUSTER, 12, DeviceSlot("node.with.dots-" + "x" * 40, "node-1"))
    assert len(pod["metadata"]["name"]) <= 63
    assert_valid(pod)


def test_extended_resources_get_a_limit_equal_to_their_request():
    # A real API server refuses a container that requests nvidia.com/gpu without a limit ("Limit must be set for
    # non overcommitable resources"); cpu and memory may be requested without limits.
    task = make_task({"devices": {"count": 4, "perRound": 2, "resources": {
        "requests": {"cpu": "500m", "nvidia.com/gpu": 1, "example.com/fpga": "2", "hugepages-2Mi": "64Mi"},
        "limits": {"memory": "1Gi", "vendor.io/tpu": 4}}},
        "adjustment": {"resources": {"requests": {"nvidia.com/gpu": 1}}}})

    train = build_train_pod(task, CLUSTER, 1, DeviceSlot("d000", "gpu-1"))
    adjust = build_adjust_pod(task, CLUSTER, 1)

    assert train["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "nvidia.com/gpu": "1", "example.com/fpga": "2", "hugepages-2Mi": "64Mi",
                     "vendor.io/tpu": "4"},
        "limits": {"memory": "1Gi", "vendor.io/tpu": "4", "nvidia.com/gpu": "1", "example.com/fpga": "2",
                   "hugepages-2Mi": "64Mi"}}
    assert adjust["spec"]["containers"][0]["resources"] == {"requests": {"nvidia.com/gpu": "1"},
                                                            "limits": {"nvidia.com/gpu": "1"}}
    assert_valid(train)


def test_native_resources_stay_overcommitable():
    from fedtask_operator.core.pods import is_overcommit_forbidden

    assert [name for name in ("cpu", "memory", "ephemeral-storage", "kubernetes.io/foo", "node.kubernetes.io/x",
                              "requests.nvidia.com/gpu") if is_overcommit_forbidden(name)] == []
    assert all(is_overcommit_forbidden(name) for name in ("nvidia.com/gpu", "amd.com/gpu", "hugepages-1Gi"))


# --------------------------------------------------------------------------------------------------------------------
# spec.podTemplate and spec.server

TEMPLATE = {
    "metadata": {"labels": {"kueue.x-k8s.io/queue-name": "team-a", "cost-center": "ml"},
                 "annotations": {"sidecar.istio.io/inject": "false"}},
    "runtimeClassName": "nvidia", "schedulerName": "volcano",
    "env": [{"name": "WANDB_MODE", "value": "offline"}, {"name": "FEDTASK_TORCH_THREADS", "value": "2"},
            {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
            {"name": "PYTHONPATH", "value": "/code"}],
    "volumes": [{"name": "code", "configMap": {"name": "my-model"}},
                {"name": "weights", "persistentVolumeClaim": {"claimName": "pretrained", "readOnly": True}},
                {"name": "scratch", "emptyDir": {"medium": "Memory"}}],
    "volumeMounts": [{"name": "code", "mountPath": "/code", "readOnly": True},
                     {"name": "weights", "mountPath": "/weights", "subPath": "v2"},
                     {"name": "scratch", "mountPath": "/scratch"}],
}
TEMPLATE_ENV = [{"name": "WANDB_MODE", "value": "offline"}, {"name": "FEDTASK_TORCH_THREADS", "value": "2"},
                {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key",
                                                                         "optional": False}}},
                {"name": "PYTHONPATH", "value": "/code"}]
TEMPLATE_VOLUMES = [{"name": "code", "configMap": {"name": "my-model", "optional": False}},
                    {"name": "weights", "persistentVolumeClaim": {"claimName": "pretrained", "readOnly": True}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory"}}]
TEMPLATE_MOUNTS = [{"name": "code", "mountPath": "/code", "readOnly": True},
                   {"name": "weights", "mountPath": "/weights", "subPath": "v2"},
                   {"name": "scratch", "mountPath": "/scratch"}]
SERVER = {"resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
          "nodeSelector": {"node-role/server": "true"},
          "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "fl-server", "effect": "NoSchedule"}]}


def with_template(pod: dict) -> dict:
    """The fedtask-built pod with TEMPLATE's additions where they belong."""
    pod["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a", "cost-center": "ml",
                                 **pod["metadata"]["labels"]}
    pod["metadata"]["annotations"] = {"sidecar.istio.io/inject": "false"}
    pod["spec"]["runtimeClassName"] = "nvidia"
    pod["spec"]["schedulerName"] = "volcano"
    return pod


def test_server_pods_get_the_template_and_spec_server():
    task = make_task({"podTemplate": TEMPLATE, "server": SERVER, "devices": {"tolerations": [
        {"key": "edge", "operator": "Exists"}]}})
    server_spec = {"nodeSelector": {"node-role/server": "true"},
                   "tolerations": [{"operator": "Equal", "key": "dedicated", "value": "fl-server",
                                    "effect": "NoSchedule"}]}
    common = ["--task", "mnist", "--result-file", "/dev/termination-log"]

    for pod, name, stage, round_ in ((build_init_pod(task, CLUSTER), "mnist-init", "init", 0),
                                     (build_aggregate_pod(task, CLUSTER, 1, []), "mnist-r0001-aggregate",
                                      "aggregate", 1),
                                     (build_adjust_pod(task, CLUSTER, 1), "mnist-r0001-adjust", "adjust", 1)):
        args = pod["spec"]["containers"][0]["args"]
        assert args[0] == stage and set(common) <= set(args)
        expected = with_template(expected_pod(
            name, labels(stage, round_), args, resources={"requests": {"cpu": "2", "memory": "4Gi"}},
            # cpu: 2 gives 2 OpenMP threads; the template's own FEDTASK_TORCH_THREADS is left alone
            env_extra=[{"name": "OMP_NUM_THREADS", "value": "2"}, *TEMPLATE_ENV], extra_spec=server_spec,
            volumes=TEMPLATE_VOLUMES, mounts=TEMPLATE_MOUNTS))
        assert pod == expected, stage
        assert_valid(pod)


def test_train_and_publish_pods_get_the_template_but_not_spec_server():
    task = make_task({"podTemplate": TEMPLATE, "server": SERVER, "devices": {"tolerations": [
        {"key": "edge", "operator": "Exists"}]}, "publish": {"toDevices": True}}, status={"round": 3,
                                                                                         "shardCount": 5})
    edge = [{"operator": "Exists", "key": "edge"}]

    train = build_train_pod(task, CLUSTER, 1, DeviceSlot("d001", "n1"))
    publish = build_publish_pod(task, CLUSTER, "n1", f"{BASE}/round-0003/global.safetensors")

    assert train == with_template(expected_pod(
        "mnist-r0001-train-d001", labels("train", 1, "d001"), train["spec"]["containers"][0]["args"],
        env_extra=TEMPLATE_ENV, extra_spec={**pinned("n1"), "tolerations": edge},
        volumes=TEMPLATE_VOLUMES, mounts=TEMPLATE_MOUNTS))
    assert publish == with_template(expected_pod(
        "mnist-publish-n1", labels("publish", device="n1"), publish["spec"]["containers"][0]["args"],
        env_extra=TEMPLATE_ENV, extra_spec={**pinned("n1"), "tolerations": edge},
        volumes=[{"name": "models", "hostPath": {"path": "/var/lib/fedtask/models/team-a/mnist",
                                                "type": "DirectoryOrCreate"}}, *TEMPLATE_VOLUMES],
        mounts=[{"name": "models", "mountPath": "/models"}, *TEMPLATE_MOUNTS]))
    assert_valid(train)
    assert_valid(publish)


@pytest.mark.parametrize("resources, threads", [
    ({"requests": {"cpu": 4}}, "4"), ({"requests": {"cpu": "2500m"}, "limits": {"cpu": 8}}, "3"),
    ({"limits": {"cpu": "1.5"}}, "2"), ({"requests": {"cpu": "100m"}}, "1"), ({"requests": {"memory": "1Gi"}}, None),
    ({}, None)])
def test_worker_threads_follow_the_cpu_request(resources, threads):
    task = make_task({"devices": {"count": 5, "resources": resources}, "server": {"resources": resources}})
    for pod in (build_train_pod(task, CLUSTER, 1, DeviceSlot("d000", "n1")), build_adjust_pod(task, CLUSTER, 1)):
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env.get("OMP_NUM_THREADS") == threads and env.get("FEDTASK_TORCH_THREADS") == threads


def test_worker_threads_from_the_runtime_or_the_template_win():
    task = make_task({"devices": {"count": 5, "resources": {"requests": {"cpu": 4}}},
                      "podTemplate": {"env": [{"name": "OMP_NUM_THREADS", "value": "8"}]}})
    config = RuntimeConfig(store_base_uri="file:///s", extra_env=(("FEDTASK_TORCH_THREADS", "2"),))
    env = build_train_pod(task, config, 1, DeviceSlot("d000", "n1"))["spec"]["containers"][0]["env"]
    assert [(e["name"], e["value"]) for e in env if e["name"] in ("OMP_NUM_THREADS", "FEDTASK_TORCH_THREADS")] == [
        ("FEDTASK_TORCH_THREADS", "2"), ("OMP_NUM_THREADS", "8")]


def test_server_resources_fall_back_to_the_deprecated_adjustment_resources():
    task = make_task({"adjustment": {"resources": {"limits": {"cpu": "3"}}}})
    assert build_aggregate_pod(task, CLUSTER, 1, [])["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": "3"}}
