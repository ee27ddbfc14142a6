"""What a real cluster install needs from the chart: pullable default images whose tags follow appVersion (the worker
default the same as the operator's), credentials from an existing Secret (GitOps renders), a PodDisruptionBudget
with several replicas, the Kubernetes version the CRD's rules need, and a `helm test` hook that checks the operator."""
from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading

import pytest
import yaml

import fedtask_operator
from fedtask_operator.core.pods import DEFAULT_WORKER_IMAGE
from fedtask_operator.kube.cli import parse_config
from tests.support.tools import CHART, REPO, HelmError, Tools, helm_render, helm_template

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
# registry host (with a dot or a port) / path / name : tag: what a kubelet pulls without a registry mirror guessing
PULLABLE = re.compile(r"^[a-z0-9.-]+\.[a-z]{2,}(:[0-9]+)?/([a-z0-9._-]+/)*[a-z0-9._-]+"
                      r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def the(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    return found


def operator_env(objects: list[dict]) -> dict[str, dict]:
    container = the(objects, "Deployment", "-fedtask")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def test_default_images_are_pullable_and_follow_app_version(tools: Tools) -> None:
    objects = helm_template(tools)
    version = CHART_META["appVersion"]
    assert version == fedtask_operator.__version__, "the chart's appVersion is the package version"
    operator_image = the(objects, "Deployment", "-fedtask")["spec"]["template"]["spec"]["containers"][0]["image"]
    worker_image = operator_env(objects)["FEDTASK_DEFAULT_IMAGE"]["value"]
    assert operator_image == f"ghcr.io/fedtask/operator:{version}"
    assert worker_image == f"ghcr.io/fedtask/worker:{version}"
    for image in (operator_image, worker_image):
        assert PULLABLE.match(image), image
    # the same worker default in the chart, the operator binary and the pod builder
    assert worker_image == DEFAULT_WORKER_IMAGE == parse_config(["--all-namespaces"]).image
    readme = (REPO / "README.md").read_text()
    assert f"FROM {DEFAULT_WORKER_IMAGE}" in readme  # the documented Dockerfile for users' own code
    assert operator_env(helm_template(tools, "operator.workerImage=registry.example/w:1"))[
        "FEDTASK_DEFAULT_IMAGE"]["value"] == "registry.example/w:1"


def secret_refs(objects: list[dict]) -> set[str]:
    """The Secrets the operator's environment names (secretKeyRef, and FEDTASK_S3_SECRET for task pods)."""
    env = operator_env(objects)
    named = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})}
    if "FEDTASK_S3_SECRET" in env:
        named.add(env["FEDTASK_S3_SECRET"]["value"])
    return named


@pytest.mark.parametrize("major", [3, 4])
def test_storage_existing_secret_renders_no_credentials(tools: Tools, major: int) -> None:
    for extra in ((), ("storage.namespaceCredentials=false",)):
        values = ("storage.endpoint=s3.example.com:443", "storage.existingSecret=s3-creds", *extra)
        text = helm_render(tools, *values, major=major)
        assert text == helm_render(tools, *values, major=major), "a GitOps render must be the same every time"
        objects = [o for o in yaml.safe_load_all(text) if o]
        assert not [o for o in objects if o["kind"] == "Secret"]
        assert secret_refs(objects) == {"s3-creds"}
        # storage.credentialsSecret, its deprecated name, renders the very same bytes
        assert helm_render(tools, *values[:1], "storage.credentialsSecret=s3-creds", *extra, major=major) == text
    with pytest.raises(HelmError, match="credentialsSecret is the deprecated name of storage.existingSecret"):
        helm_render(tools, "storage.existingSecret=a", "storage.credentialsSecret=b", major=major)
    with pytest.raises(HelmError, match="for the in-chart MinIO .* set minio.existingSecret instead"):
        helm_render(tools, "minio.enabled=true", "storage.existingSecret=s3-creds", major=major)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["storage"]["existingSecret"] == "" and "Deprecated" in (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    assert "`storage.existingSecret`" in readme and "`storage.credentialsSecret`" in readme


def test_minio_existing_secret_renders_no_credentials(tools: Tools) -> None:
    values = ("minio.enabled=true", "minio.existingSecret=store-root")
    text = helm_render(tools, *values)
    assert text == helm_render(tools, *values), "a GitOps render must be the same every time (byte for byte)"
    first = [o for o in yaml.safe_load_all(text) if o]
    assert not [o for o in first if o["kind"] == "Secret"]
    minio_env = {e["name"]: e for e in the(first, "Deployment", "-minio")["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert minio_env[key]["valueFrom"]["secretKeyRef"] == {"name": "store-root", "key": key}
    assert secret_refs(first) == {"store-root"}
    # the control: without it every render generates new credentials
    assert helm_render(tools, "minio.enabled=true") != helm_render(tools, "minio.enabled=true")
    generated = [the(helm_template(tools, "minio.enabled=true"), "Secret", "-minio")["data"] for _ in range(2)]
    assert generated[0]["AWS_SECRET_ACCESS_KEY"] != generated[1]["AWS_SECRET_ACCESS_KEY"]
    with pytest.raises(HelmError, match="minio.existingSecret: leave minio.rootUser"):
        helm_template(tools, *values, "minio.rootUser=alice")


@pytest.mark.parametrize("values, expected", [
    ((), True), (("replicaCount=3",), True), (("replicaCount=1",), False),
    (("podDisruptionBudget.enabled=false",), False)])
def test_pod_disruption_budget_with_several_replicas(tools: Tools, values: tuple[str, ...], expected: bool) -> None:
    objects = helm_template(tools, *values)
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert bool(budgets) == expected
    if budgets:
        pod_labels = the(objects, "Deployment", "-fedtask")["spec"]["template"]["metadata"]["labels"]
        assert budgets[0]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert budgets[0]["spec"]["maxUnavailable"] == 1


# The core CEL language's functions and macros (no Kubernetes library): what the CRD's rules may call.
CORE_CEL = {"has", "size", "all", "exists", "exists_one", "filter", "map", "startsWith", "endsWith", "contains",
            "matches", "string", "int", "double"}


def validation_items(schema: object) -> list[dict]:
    """Every x-kubernetes-validations entry in a CRD."""
    if isinstance(schema, list):
        return [item for value in schema for item in validation_items(value)]
    if not isinstance(schema, dict):
        return []
    found = list(schema.get("x-kubernetes-validations", []))
    return found + [item for key, value in schema.items() if key != "x-kubernetes-validations"
                    for item in validation_items(value)]


def render_for(tools: Tools, kube_version: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools.helm(3)), "template", "ft", str(CHART), "--kube-version", kube_version],
                          capture_output=True, text=True, env=tools.helm_env(), timeout=60)


def test_kube_version_is_what_the_crd_rules_need(tools: Tools) -> None:
    crd = yaml.safe_load((REPO / "crds" / "federatedtask.yaml").read_text())
    text = yaml.safe_dump(crd)
    assert "fieldPath:" in text and "reason:" in text  # CEL rule fields of Kubernetes 1.28
    assert CHART_META["kubeVersion"] == ">=1.28.0-0"
    # Nothing newer than 1.28 (docs/api.md, "Kubernetes versions"): no optionalOldSelf (1.29), only core CEL functions
    # (no Kubernetes CEL library, whose functions arrived version by version); messageExpression is 1.27.
    items = validation_items(crd)
    assert len(items) > 30 and any("messageExpression" in item for item in items)
    assert set().union(*items) <= {"rule", "message", "messageExpression", "reason", "fieldPath"}, set().union(*items)
    functions = {name for item in items for key in ("rule", "messageExpression")
                 for name in re.findall(r"([A-Za-z_]+)\(", item.get(key, ""))}
    assert functions <= CORE_CEL, functions - CORE_CEL
    old = render_for(tools, "1.27.9")
    assert old.returncode != 0 and "kubeVersion" in old.stderr + old.stdout
    assert render_for(tools, "1.28.0").returncode == 0


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def serve(body: bytes) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Metrics,), {"body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_helm_test_hook_checks_the_operator_metrics(tools: Tools) -> None:
    objects = helm_template(tools, "helmTest.timeoutSeconds=1")
    pod = the(objects, "Pod", "-test-metrics")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = the(objects, "Service", "-metrics")
    container = pod["spec"]["containers"][0]
    script, url = container["args"]
    assert url == (f"http://{service['metadata']['name']}.fedtask.svc:{service['spec']['ports'][0]['port']}"
                   "/metrics")
    assert container["image"] == the(objects, "Deployment", "-fedtask")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert container["command"] == ["python", "-c"]
    # the hook's own script, run here against a server that is the operator's metrics and one that is not
    for body, ok in ((b"# TYPE fedtask_tasks gauge\nfedtask_tasks{namespace=\"a\",phase=\"Running\"} 1\n", True),
                     (b"some_other_exporter 1\n", False)):
        server = serve(body)
        try:
            local = f"http://127.0.0.1:{server.server_address[1]}/metrics"
            result = subprocess.run([sys.executable, "-c", script, local], capture_output=True, text=True, timeout=30)
        finally:
            server.shutdown()
        assert (result.returncode == 0) == ok, result.stderr
        assert ("metrics are served" in result.stdout) == ok
    assert not [o for o in helm_template(tools, "metrics.service.enabled=false")
                if o["kind"] == "Pod" and o["metadata"]["name"].endswith("-test-metrics")]


def test_helm_test_hook_runs_a_tiny_task_with_rights_to_federated_tasks_only(tools: Tools) -> None:
    objects = helm_template(tools, "helmTest.task.timeoutSeconds=60")
    hooks = [o for o in objects if o["metadata"]["name"].endswith("-test-task")]
    assert sorted(o["kind"] for o in hooks) == ["Pod", "Role", "RoleBinding", "ServiceAccount"]
    assert all(o["metadata"]["annotations"]["helm.sh/hook"] == "test" for o in hooks)
    assert all(o["metadata"]["namespace"] == "fedtask" for o in hooks)
    role = the(hooks, "Role", "-test-task")
    assert role["rules"] == [{"apiGroups": ["fedtask.io"], "resources": ["federatedtasks"],
                              "verbs": ["get", "create", "delete"]}]
    binding = the(hooks, "RoleBinding", "-test-task")
    account = the(hooks, "ServiceAccount", "-test-task")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "fedtask"}]
    pod = the(hooks, "Pod", "-test-task")
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    # the hook objects are created before the Pod (lower weight), so the Pod's token has its rights from the start
    assert all(int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0 for o in hooks if o["kind"] != "Pod")
    script, namespace, name, timeout, selector = pod["spec"]["containers"][0]["args"]
    compile(script, "helm-test-task", "exec")
    assert (namespace, timeout, json.loads(selector)) == ("fedtask", "60", {"fedtask.io/device": "true"})
    assert len(name) <= 50 and name.endswith("-helm-test")
    assert not [o for o in helm_template(tools, "helmTest.task.enabled=false")
                if o["metadata"]["name"].endswith("-test-task")]
