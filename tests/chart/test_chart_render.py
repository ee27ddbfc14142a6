"""The chart renders, with Helm 3 and Helm 4, into objects a recent Kubernetes accepts, for every combination of
the values users switch; the objects are least-privilege and hardened; the embedded CRD and dashboard are the
repository's own files."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.tools import CHART, REPO, HelmError, Tools, helm_template

KUBERNETES_VERSIONS = ("1.34", "1.37")  # recent ones; kubernetes-validate bundles schemas up to 1.37
KUBERNETES_VERSION = KUBERNETES_VERSIONS[-1]
SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM_RESOURCE_SCHEMAS = {  # monitoring.coreos.com kinds: our own minimal schemas of the fields the chart sets
    "ServiceMonitor": SCHEMAS / "servicemonitor.json",
    "PrometheusRule": SCHEMAS / "prometheusrule.json",
}
COMBINATIONS = {
    "defaults": [],
    "namespace-scoped": ["rbac.scope=namespace", "operator.watchNamespaces={team-a,team-b}"],
    "minio": ["minio.enabled=true"],
    "minio-no-persistence": ["minio.enabled=true", "minio.persistence.enabled=false"],
    "external-store": ["storage.endpoint=s3.example.com:443", "storage.secure=true",
                       "storage.credentialsSecret=s3-creds"],
    "monitoring": ["metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true"],
    "everything-on": ["minio.enabled=true", "metrics.serviceMonitor.enabled=true",
                      "metrics.prometheusRule.enabled=true", "rbac.scope=namespace"],
    "minimal": ["crds.enabled=false", "dashboard.enabled=false", "networkPolicy.enabled=false",
                "metrics.service.enabled=false", "replicaCount=1"],
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
CHART_CRD_FILES = sorted((CHART / "crds").glob("*.yaml"))  # installed by Helm before the templates


def crd_schemas() -> dict[str, dict]:
    """kind -> openAPIV3Schema of the CRDs the chart ships in its crds/ folder."""
    schemas = {}
    for path in CHART_CRD_FILES:
        for crd in yaml.safe_load_all(path.read_text()):
            schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schemas


def kinds(objects: list[dict]) -> list[str]:
    return sorted(obj["kind"] for obj in objects)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def installed(objects: list[dict]) -> list[dict]:
    """What `helm install` creates: without the `helm test` hooks, which exist only while `helm test` runs."""
    return [obj for obj in objects if (obj["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test"]


def the(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    matches = [obj for obj in by_kind(objects, kind) if obj["metadata"]["name"].endswith(name_suffix)]
    names = [match["metadata"]["name"] for match in matches]
    assert len(matches) == 1, f"expected one {kind} named *{name_suffix}, got {names}"
    return matches[0]


@pytest.fixture(scope="module")
def rendered(tools: Tools) -> dict[str, list[dict]]:
    return {name: helm_template(tools, *values) for name, values in COMBINATIONS.items()}


@pytest.mark.parametrize("major", [3, 4])
def test_chart_lints_strictly(tools: Tools, major: int) -> None:
    for values in (COMBINATIONS["defaults"], COMBINATIONS["everything-on"]):
        args = [str(tools.helm(major)), "lint", "--strict", str(CHART)] + [a for v in values for a in ("--set", v)]
        result = subprocess.run(args, capture_output=True, text=True, env=tools.helm_env(), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_helm_3_and_helm_4_render_the_same_objects(tools: Tools, rendered: dict[str, list[dict]]) -> None:
    values = COMBINATIONS["everything-on"]
    # Generated MinIO credentials differ between runs: compare with given ones.
    values = values + ["minio.rootUser=fedtask", "minio.rootPassword=not-a-secret"]
    assert helm_template(tools, *values, major=4) == helm_template(tools, *values, major=3)


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_object_is_valid_for_a_recent_kubernetes(rendered: dict[str, list[dict]], combination: str) -> None:
    objects = rendered[combination]
    assert objects, "nothing rendered"
    chart_crds = crd_schemas()
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CUSTOM_RESOURCE_SCHEMAS or obj["kind"] in chart_crds:
            schema = (json.loads(CUSTOM_RESOURCE_SCHEMAS[obj["kind"]].read_text())
                      if obj["kind"] in CUSTOM_RESOURCE_SCHEMAS else chart_crds[obj["kind"]])
            errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
            assert not errors, f"{name}: {errors}"
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{combination}: {name} (Kubernetes {version}): {error.message} at {list(error.path)}")


def test_chart_crds_folder_holds_valid_crds() -> None:
    assert CHART_CRD_FILES
    for path in CHART_CRD_FILES:
        for crd in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)


def test_values_switch_the_objects_they_name(rendered: dict[str, list[dict]]) -> None:
    defaults = kinds(rendered["defaults"])
    assert "CustomResourceDefinition" in defaults and "ConfigMap" in defaults  # crds.enabled, dashboard.enabled: true
    assert "ServiceMonitor" not in defaults and "PrometheusRule" not in defaults
    assert not [o for o in rendered["defaults"] if o["metadata"]["name"].endswith("-minio")]
    assert {"ServiceMonitor", "PrometheusRule"} <= set(kinds(rendered["monitoring"]))
    minio = [o["kind"] for o in rendered["minio"] if o["metadata"]["name"].endswith("-minio")]
    assert sorted(minio) == ["Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Secret", "Service"]
    assert "PersistentVolumeClaim" not in kinds(rendered["minio-no-persistence"])
    minimal = kinds(rendered["minimal"])
    assert not {"CustomResourceDefinition", "ConfigMap", "NetworkPolicy", "Service"} & set(minimal)


def test_namespace_scope_grants_task_rights_only_in_watched_namespaces(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["namespace-scoped"]
    roles = by_kind(installed(objects), "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(installed(objects), "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    cluster_rules = [rule for role in by_kind(objects, "ClusterRole") for rule in role["rules"]]
    assert not any(set(rule["verbs"]) - {"get", "list", "watch"} for rule in cluster_rules
                   if {"pods", "nodes"} & set(rule["resources"])), "namespace scope must not create pods cluster-wide"
    args = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    # Without explicit namespaces the release namespace is the one watched.
    default_namespaced = rendered["everything-on"]
    assert [r["metadata"]["namespace"] for r in by_kind(installed(default_namespaced), "Role")] == ["fedtask"]


def test_cluster_scope_watches_all_namespaces(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["defaults"]
    assert not by_kind(installed(objects), "Role")
    args = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_rbac_has_no_wildcards_and_reads_no_secret_but_its_own(rendered: dict[str, list[dict]],
                                                                combination: str) -> None:
    """Secrets: only `get` and `delete` of the operator's own fedtask-store-credentials and `create` (per-namespace
    store keys, --namespace-credentials); never list, watch, update or another Secret's name."""
    for role in by_kind(rendered[combination], "ClusterRole") + by_kind(installed(rendered[combination]), "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: wildcard in {field}: {rule}"
            if "secrets" in rule["resources"]:
                assert rule["resources"] == ["secrets"], rule
                assert (rule["verbs"] == ["get", "delete"]
                        and rule.get("resourceNames") == ["fedtask-store-credentials"]) \
                    or (rule["verbs"] == ["create"] and not rule.get("resourceNames")), rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_pod_runs_non_root_with_a_read_only_root_filesystem(rendered: dict[str, list[dict]],
                                                                  combination: str) -> None:
    workloads = [o for o in rendered[combination] if o["kind"] in WORKLOAD_KINDS]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, f"{name}/{container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{name}/{container['name']}"
            assert not context.get("privileged"), f"{name}/{container['name']}"
            assert "limits" in container["resources"] and "requests" in container["resources"], name
            assert container.get("livenessProbe") and container.get("readinessProbe"), name


def test_operator_is_highly_available_and_probed(rendered: dict[str, list[dict]]) -> None:
    deployment = the(rendered["defaults"], "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--leader-election" in container["args"] and "--lease-name=ft-fedtask" in container["args"]
    assert not any(arg.startswith("--peering") for arg in container["args"])  # the Lease replaces kopf peering
    health_port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    assert f"--liveness=http://0.0.0.0:{health_port}/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert the(rendered["defaults"], "ClusterKopfPeering")["metadata"]["name"] == "ft-fedtask"
    peerings = by_kind(rendered["namespace-scoped"], "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    # one replica takes the Lease too: `kubectl scale --replicas=2` must not give two operators acting at once
    single = the(rendered["minimal"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--standalone" not in single["args"] and "--leader-election" in single["args"]
    assert the(rendered["minimal"], "ClusterKopfPeering")["metadata"]["name"] == "ft-fedtask"


def test_the_leader_fence_checks_the_deployment_s_lease_and_can_be_turned_off(
        tools: Tools, rendered: dict[str, list[dict]]) -> None:
    objects = rendered["defaults"]
    policy, binding = the(objects, "ValidatingAdmissionPolicy"), the(objects, "ValidatingAdmissionPolicyBinding")
    args = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    namespace = the(objects, "Deployment")["metadata"]["namespace"]
    assert f"--lease-name={binding['spec']['paramRef']['name']}" in args
    assert binding["spec"]["paramRef"]["namespace"] == namespace
    assert binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert policy["spec"]["paramKind"] == {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
    selector = policy["spec"]["matchConstraints"]["objectSelector"]
    assert selector == {"matchLabels": {"fedtask.io/leader-fenced": "true"}}
    lease = f"'{namespace}/{binding['spec']['paramRef']['name']}'"
    assert lease in policy["spec"]["matchConditions"][0]["expression"]
    for values in (["operator.leaderElection.admissionFence=false"], ["operator.leaderElection.enabled=false"]):
        off = helm_template(tools, *values)
        assert not by_kind(off, "ValidatingAdmissionPolicy") and not by_kind(off, "ValidatingAdmissionPolicyBinding")


def test_services_and_monitors_select_what_they_mean(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["everything-on"]
    operator_labels = the(objects, "Deployment", "fedtask")["spec"]["template"]["metadata"]["labels"]
    minio_labels = the(objects, "Deployment", "-minio")["spec"]["template"]["metadata"]["labels"]
    metrics = the(objects, "Service", "-metrics")
    assert metrics["spec"]["selector"].items() <= operator_labels.items()
    assert the(objects, "Service", "-minio")["spec"]["selector"].items() <= minio_labels.items()
    monitor = the(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == metrics["spec"]["ports"][0]["name"]
    operator_policy = the(objects, "NetworkPolicy", "-operator")
    assert operator_policy["spec"]["podSelector"]["matchLabels"].items() <= operator_labels.items()


def test_operator_gets_the_in_chart_store_and_its_generated_credentials(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["minio"]
    env = {e["name"]: e.get("value") for e in
           the(objects, "Deployment", "fedtask")["spec"]["template"]["spec"]["containers"][0]["env"]}
    service = the(objects, "Service", "-minio")
    port = service["spec"]["ports"][0]["port"]
    assert env["FEDTASK_S3_ENDPOINT"] == f"{service['metadata']['name']}.fedtask.svc:{port}"
    secret = the(objects, "Secret", "-minio")
    # the root keys stay with the operator: task pods get presigned URLs only (FEDTASK_S3_PRESIGNED_URLS)
    assert env["FEDTASK_S3_PRESIGNED_URLS"] == "true" and "FEDTASK_S3_SECRET" not in env
    assert "FEDTASK_S3_NAMESPACE_CREDENTIALS" not in env
    assert root_keys_from(the(objects, "Deployment", "fedtask")) == {secret["metadata"]["name"]}
    keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert keys <= set(secret["data"])
    assert len(secret["data"]["AWS_SECRET_ACCESS_KEY"]) >= 40  # generated, base64 of 40 characters
    external = {e["name"]: e.get("value") for e in the(rendered["external-store"], "Deployment")["spec"]["template"][
        "spec"]["containers"][0]["env"]}
    assert external["FEDTASK_S3_ENDPOINT"] == "s3.example.com:443" and "FEDTASK_S3_SECRET" not in external
    assert external["FEDTASK_S3_SECURE"] == "true" and external["FEDTASK_S3_PRESIGNED_URLS"] == "true"
    assert root_keys_from(the(rendered["external-store"], "Deployment")) == {"s3-creds"}


def root_keys_from(deployment: dict) -> set[str]:
    """The Secrets the operator container reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from."""
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["valueFrom"]["secretKeyRef"]["name"] for e in env
            if e["name"].startswith("AWS_") and "valueFrom" in e}


def test_without_namespace_credentials_pods_read_the_shared_secret_and_uris_may_be_allowed(tools: Tools) -> None:
    """storage.presignedUrls=false and storage.namespaceCredentials=false: the old shared Secret, which the
    operator itself reads only for cleanupStore; storage.uriAllow reaches the operator. With presignedUrls=false
    alone, per-namespace MinIO users."""
    objects = helm_template(tools, "storage.endpoint=s3.example.com:443", "storage.credentialsSecret=s3-creds",
                            "storage.presignedUrls=false", "storage.namespaceCredentials=false",
                            "storage.uriAllow={s3://models/public,s3://base}")
    deployment = the(objects, "Deployment", "fedtask")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FEDTASK_S3_SECRET"] == "s3-creds" and "FEDTASK_S3_NAMESPACE_CREDENTIALS" not in env
    assert "FEDTASK_S3_PRESIGNED_URLS" not in env
    issuing = the(helm_template(tools, "storage.endpoint=s3.example.com:443", "storage.credentialsSecret=s3-creds",
                                "storage.presignedUrls=false"), "Deployment", "fedtask")
    issued = {e["name"]: e.get("value") for e in issuing["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert issued["FEDTASK_S3_NAMESPACE_CREDENTIALS"] == "true" and "FEDTASK_S3_PRESIGNED_URLS" not in issued
    assert root_keys_from(issuing) == {"s3-creds"}
    assert root_keys_from(deployment) == set()
    assert env["FEDTASK_S3_URI_ALLOW"] == "s3://models/public,s3://base"
    with pytest.raises(HelmError, match="uriAllow"):
        helm_template(tools, "storage.uriAllow={https://example.com/x}")


def test_given_minio_credentials_are_used(tools: Tools) -> None:
    objects = helm_template(tools, "minio.enabled=true", "minio.rootUser=alice", "minio.rootPassword=correct-horse")
    data = the(objects, "Secret", "-minio")["data"]
    assert base64.b64decode(data["AWS_ACCESS_KEY_ID"]) == b"alice"
    assert base64.b64decode(data["MINIO_ROOT_PASSWORD"]) == b"correct-horse"


def test_chart_crd_is_the_repository_crd_with_a_keep_policy(rendered: dict[str, list[dict]]) -> None:
    sources = sorted((REPO / "crds").glob("*.yaml"))
    assert sources, "crds/ holds no CRD"
    documents = [yaml.safe_load(path.read_text()) for path in sources]
    expected = {document["metadata"]["name"]: document for document in documents}
    rendered_crds = by_kind(rendered["defaults"], "CustomResourceDefinition")
    assert sorted(crd["metadata"]["name"] for crd in rendered_crds) == sorted(expected)
    for crd in rendered_crds:
        metadata = crd["metadata"]
        assert metadata["annotations"].pop("helm.sh/resource-policy") == "keep"
        for key in [k for k in metadata["labels"] if k.startswith(("helm.sh/", "app.kubernetes.io/"))]:
            del metadata["labels"][key]
        for field in ("annotations", "labels"):
            if not metadata[field]:
                del metadata[field]
        assert crd == expected[metadata["name"]]


def test_chart_copies_are_identical_to_their_sources() -> None:
    result = subprocess.run([sys.executable, str(REPO / "hack" / "sync-chart-files.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"stale chart files, run hack/sync-chart-files.py:\n{result.stderr}"


def test_dashboard_configmap_holds_the_repository_dashboard(rendered: dict[str, list[dict]]) -> None:
    configmap = the(rendered["defaults"], "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["fedtask.json"] + "\n" == (REPO / "dashboards" / "fedtask.json").read_text()


def test_network_policies_allow_only_api_store_and_dns(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["minio"]
    operator = the(objects, "NetworkPolicy", "-operator")["spec"]
    task_pods = the(objects, "NetworkPolicy", "-task-pods")["spec"]
    assert set(operator["policyTypes"]) == set(task_pods["policyTypes"]) == {"Ingress", "Egress"}
    assert task_pods["ingress"] == []
    egress_ports = lambda policy: sorted(p["port"] for rule in policy["egress"] for p in rule["ports"])  # noqa: E731
    assert egress_ports(task_pods) == [53, 53, 9000]  # DNS (UDP, TCP) and the store; never the API server
    assert egress_ports(operator) == [53, 53, 443, 6443, 9000]
    store_rule = [rule for rule in task_pods["egress"] if rule["ports"][0]["port"] == 9000][0]
    minio_labels = the(objects, "Deployment", "-minio")["spec"]["template"]["metadata"]["labels"]
    assert store_rule["to"][0]["podSelector"]["matchLabels"].items() <= minio_labels.items()


def admits(policy: dict, pod_namespace: str, namespace_labels: dict, pod_labels: dict) -> bool:
    """Whether a NetworkPolicy's ingress admits a pod, by the NetworkPolicyPeer rules: a podSelector alone selects
    pods of the policy's own namespace, a namespaceSelector selects namespaces, both together select pods of those."""
    from fedtask_operator.core.scheduling.matching import matches_selector

    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from") or [{}]:
            if "namespaceSelector" in peer:
                in_namespace = matches_selector(namespace_labels, peer["namespaceSelector"])
            else:
                in_namespace = pod_namespace == policy["metadata"]["namespace"]
            if in_namespace and matches_selector(pod_labels, peer.get("podSelector") or {}):
                return True
    return False


def test_the_store_admits_no_pod_on_a_label_its_tenant_can_set(rendered: dict[str, list[dict]], tools: Tools) -> None:
    """Issue 12: the MinIO policy admitted any pod of any namespace carrying fedtask.io/task, which every tenant can
    set on its own pods. Now a namespace must be the release namespace or carry the admin's label."""
    objects = rendered["minio"]
    minio = the(objects, "NetworkPolicy", "-minio")
    operator = the(objects, "Deployment", "fedtask")["spec"]["template"]["metadata"]["labels"]
    task_pod = {"fedtask.io/task": "t", "fedtask.io/stage": "train"}
    ns = lambda name, **labels: {"kubernetes.io/metadata.name": name, **labels}  # noqa: E731
    admitted = "fedtask.io/store-access"
    assert admits(minio, "fedtask", ns("fedtask"), task_pod)  # the release namespace
    assert admits(minio, "team-a", ns("team-a", **{admitted: "true"}), task_pod)  # a namespace the admin labelled
    assert admits(minio, "fedtask", ns("fedtask"), operator)  # the operator
    assert not admits(minio, "team-x", ns("team-x"), task_pod)  # any tenant's own pod with the label
    assert not admits(minio, "team-x", ns("team-x"), {**task_pod, **operator})  # or with the operator's labels too
    assert not admits(minio, "team-a", ns("team-a", **{admitted: "yes"}), task_pod)
    assert not admits(minio, "team-a", ns("team-a", **{admitted: "true"}), {"app": "other"})  # not a task pod
    custom = the(helm_template(tools, "minio.enabled=true", "networkPolicy.storeNamespaceLabel=example.com/fl"),
                 "NetworkPolicy", "-minio")
    assert admits(custom, "team-a", ns("team-a", **{"example.com/fl": "true"}), task_pod)
    assert not admits(custom, "team-a", ns("team-a", **{admitted: "true"}), task_pod)


BAD_VALUES = {
    "bogusTopLevel=1": "bogusTopLevel",
    "rbac.scope=everywhere": "scope",
    "replicaCount=-1": "replicaCount",
    "minio.enabled=yes-please": "enabled",
    "metrics.port=70000": "port",
    "metrics.serviceMonitor.interval=often": "interval",
    "storage.endpoint=http://minio:9000": "endpoint",
    "storage.bucket=Not_A_Bucket": "bucket",
    "operator.watchNamespaces={Team_A}": "watchNamespaces",
    "securityContext.readOnlyRootFilesystem=false": "readOnlyRootFilesystem",
    "podSecurityContext.runAsNonRoot=false": "runAsNonRoot",
    "image.pullPolicy=Sometimes": "pullPolicy",
    "minio.rootPassword=short": "rootPassword",
    "operator.confinement.allowedHostPathPrefixes={relative}": "allowedHostPathPrefixes",
    "operator.confinement.allowedHostPathPrefixes={/srv/../etc}": "allowedHostPathPrefixes",
    "operator.confinement.allowedTolerations={x}": "allowedTolerations",
    "networkPolicy.storeNamespaceLabel=not a label": "storeNamespaceLabel",
    "dashboard.labels.grafana_dashboard=1": "grafana_dashboard",  # --set makes 1 a number; labels are strings
}


@pytest.mark.parametrize("value", sorted(BAD_VALUES))
@pytest.mark.parametrize("major", [3, 4])
def test_wrong_values_are_rejected_naming_the_field(tools: Tools, value: str, major: int) -> None:
    field = BAD_VALUES[value]
    with pytest.raises(HelmError) as error:
        helm_template(tools, value, major=major)
    assert "schema" in str(error.value) and field in str(error.value), str(error.value)


@pytest.mark.parametrize("combination", ["defaults", "namespace-scoped", "minio", "external-store", "minimal"])
def test_the_operator_accepts_the_rendered_args_and_env(rendered: dict[str, list[dict]], combination: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's flags and environment, parsed by the operator's own command line."""
    from fedtask_operator.kube.cli import parse_config

    container = the(rendered[combination], "Deployment", "fedtask")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "operator"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name in [name for name in os.environ if name.startswith("FEDTASK_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # from a Secret: present when the chart names it
        monkeypatch.delenv(name, raising=False)
        if any(e["name"] == name and "valueFrom" in e for e in container["env"]):
            monkeypatch.setenv(name, "from-the-secret")
    config = parse_config(container["args"][1:])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.metrics_port == ports["metrics"]
    assert config.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert config.image == env["FEDTASK_DEFAULT_IMAGE"]
    assert config.store_secure is (env["FEDTASK_S3_SECURE"] == "true")
    assert config.store_endpoint == env.get("FEDTASK_S3_ENDPOINT", "")
    assert config.store_secret == env.get("FEDTASK_S3_SECRET", "")
    assert config.namespace_credentials is (env.get("FEDTASK_S3_NAMESPACE_CREDENTIALS") == "true")
    assert config.presigned_urls is (env.get("FEDTASK_S3_PRESIGNED_URLS") == "true")
    assert config.store_bucket == "fedtask" and config.store_prefix == "tasks"
    replicas = the(rendered[combination], "Deployment", "fedtask")["spec"]["replicas"]
    assert config.leader_election and config.lease_name == "ft-fedtask" and replicas >= 1
    assert config.lease_duration == 15 and config.peering == ""  # kopf runs without peering under the Lease
    if combination == "namespace-scoped":
        assert config.namespaces == ("team-a", "team-b")
    else:
        assert config.clusterwide


def test_confinement_values_reach_the_operator(tools: Tools, monkeypatch: pytest.MonkeyPatch) -> None:
    """operator.confinement (issue 12): the defaults are the operator's safe defaults, set values become its
    allowlists, and an empty prefix list disables hostPath instead of falling back to the default."""
    from fedtask_operator.core.confinement import Confinement
    from fedtask_operator.kube.cli import parse_config

    for name in [name for name in os.environ if name.startswith("FEDTASK_")]:
        monkeypatch.delenv(name)

    def confinement(*values: str) -> Confinement:
        container = the(helm_template(tools, *values), "Deployment", "fedtask")["spec"]["template"]["spec"][
            "containers"][0]
        return parse_config(container["args"][1:]).confinement

    assert confinement() == Confinement()
    assert confinement("operator.confinement.allowedHostPathPrefixes={/srv/fl,/data}",
                       "operator.confinement.allowedTolerationKeys={dedicated,*}",
                       "operator.confinement.allowedPriorityClasses={batch}",
                       "operator.confinement.allowedServiceAccounts={fl-worker}",
                       "operator.confinement.allowedRuntimeClasses={nvidia,kata}",
                       "operator.confinement.allowedSchedulerNames={volcano}") == Confinement(
        ("/srv/fl", "/data"), ("dedicated", "*"), ("batch",), ("fl-worker",), ("nvidia", "kata"), ("volcano",))
    assert confinement("operator.confinement.allowedHostPathPrefixes=null").allowed_host_path_prefixes == ()


def leaf_paths(values: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("labels", "requests", "limits"):
            paths += leaf_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)`", readme, flags=re.MULTILINE))
    # "a.b" / ".c" rows document a.b and a.c; a row for an object documents its children
    expanded = set()
    for row in re.findall(r"^\| (`[^|]+)\|", readme, flags=re.MULTILINE):
        names = re.findall(r"`([^`]+)`", row)
        first = names[0]
        expanded.add(first)
        for name in names[1:]:
            expanded.add(first.rsplit(".", 1)[0] + name if name.startswith(".") else name)
    documented |= expanded
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in leaf_paths(values)
               if not any(path == doc or path.startswith(doc + ".") for doc in documented)]
    assert not missing, f"values not documented in helm/fedtask/README.md: {missing}"


@pytest.mark.parametrize("values", [[], ["minio.enabled=true", "rbac.scope=namespace"]], ids=["defaults", "minio"])
def test_notes_render_with_every_value_resolved(tools: Tools, values: list[str]) -> None:
    args = [str(tools.helm4), "install", "--dry-run=client", "ft", str(CHART), "--namespace", "fedtask"]
    result = subprocess.run(args + [a for v in values for a in ("--set", v)], capture_output=True, text=True,
                            env=tools.helm_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "<no value>" not in notes and "kubectl -n fedtask rollout status deployment/ft-fedtask" in notes
    if values:
        assert "ft-fedtask-minio.fedtask.svc:9000" in notes and "namespace(s) fedtask" in notes
    else:
        assert "WARNING: no default store" in notes and "all namespaces" in notes


@pytest.mark.parametrize("combination", ["defaults", "namespace-scoped"])
def test_chart_rbac_rules_are_the_operators_rules(rendered: dict[str, list[dict]], combination: str) -> None:
    rules = yaml.safe_load((REPO / "deploy" / "rbac" / "rules.yaml").read_text())
    objects = rendered[combination]
    assert the(objects, "ClusterRole", "-cluster")["rules"] == rules["cluster"]
    task_roles = (by_kind(installed(objects), "Role") if combination == "namespace-scoped"
                  else [the(objects, "ClusterRole", "-tasks")])
    assert task_roles and all(role["rules"] == rules["tasks"] for role in task_roles)
