"""A Kubernetes API for tests: kmock's in-memory emulator served over HTTP from a background thread.

kmock 0.8 needs three workarounds to carry a real kopf operator (tests/api/test_emulator.py checks that they hold):
1. `GET /api/v1/namespaces` fails in its path parser: namespaces are pre-loaded, operators run with `--namespace`;
2. objects get no uid/resourceVersion/creationTimestamp/generateName handling: injected here on create, the
   resourceVersion is bumped on every patch;
3. objects created without metadata.namespace in the body vanish from namespaced watches: copied from the URL.
It also refuses, as an API server does, a merge patch carrying a metadata.resourceVersion other than the stored one
(409 Conflict: the optimistic concurrency the operator's status writes rely on).
It has no controllers either: the garbage collector (ownerReferences cascade) is emulated here, pods are run by
`tests.support.kubelet`. Label and field selectors are ignored by the emulator: clients must filter themselves.

The server runs on its own event loop in a thread, so tests stay synchronous and may block (subprocesses, sleeps)
without stalling the API.
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import json
import pathlib
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import kmock
import yaml
from kmock._internal import parsing as kmock_parsing

from fedtask_operator.core.scheduling import synthetic
from fedtask_operator.local.files import utc_timestamp

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "federatedtask.yaml"
FEDERATEDTASKS = "fedtask.io/v1alpha1/federatedtasks"
PODS = "v1/pods"
NODES = "v1/nodes"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"
TEST_USER_AGENT = "fedtask-tests"  # what the tests' own clients send, to tell their calls from the operator's


def _parse_path(path: str, _original=kmock_parsing.parse_path) -> kmock_parsing.ParsedPath:
    """Workaround 1: kmock's parser fails on `/api/v1/namespaces[/NAME]` (it takes "namespaces" for a scope)."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return kmock_parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _original(path)


kmock_parsing.parse_path = _parse_path


class FedtaskEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the metadata a real API server maintains, and the ownerReferences cascade.

    `timeline` records (monotonic time, action, plural, name, status.phase) of every create and patch, and
    (time, "delete", plural, name, None) of every delete, as each request arrives.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.timeline: list[tuple] = []

    _versions = itertools.count(1)

    async def _handle(self, request: kmock.Request):
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            data = request.data if isinstance(request.data, dict) else {}
            self.timeline.append((time.monotonic(), str(request.action.value).lower(), request.resource.plural,
                                  request.name or data.get("metadata", {}).get("name"),
                                  (data.get("status") or {}).get("phase")))
        elif request.resource is not None and request.action == kmock.action.DELETE and request.name:
            self.timeline.append((time.monotonic(), "delete", request.resource.plural, request.name, None))
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", utc_timestamp())
                meta["resourceVersion"] = str(next(self._versions))
                meta.setdefault("generation", 1)
            elif request.action == kmock.action.UPDATE:
                await self._check_precondition(request, meta.get("resourceVersion"))
                meta["resourceVersion"] = str(next(self._versions))
        try:
            response = await super()._handle(request)
        except Exception as error:
            # A JSON patch whose `test` op fails (kopf tests resourceVersion when it edits finalizers) is a conflict
            # the client must re-read for: the API server answers 422, kmock would answer 500 (retried verbatim).
            if type(error).__name__ == "JsonPatchTestFailed":
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from None
            raise
        if request.action in (kmock.action.DELETE, kmock.action.CREATE) and response.status < 300:
            await self._collect_garbage()
        return response

    async def _serve_list(self, request: kmock.Request):
        """Paged as the API server pages a list: at most `limit` items, and a `continue` token (here an offset into
        the current list) while more remain. kmock answers every list in one response."""
        payload = await super()._serve_list(request)
        limit = int(request.params.get("limit") or 0)
        if limit > 0 and isinstance(payload, dict):
            start = int(request.params.get("continue") or 0)
            items = payload["items"]
            payload["items"] = items[start:start + limit]
            if start + limit < len(items):
                payload["metadata"] = {**payload["metadata"], "continue": str(start + limit)}
        return payload

    async def _check_precondition(self, request: kmock.Request, expected: str | None) -> None:
        """A patch that names a resourceVersion applies only to that version (else 409, as the API server answers)."""
        if expected is None or request.name is None:
            return
        async with self._lock:
            key = (request.resource, request.namespace, request.name)
            stored = None if key not in self._objects or self._objects[key].deleted else self._objects[key].raw
        current = (stored or {}).get("metadata", {}).get("resourceVersion")
        if stored is not None and current != expected:
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message=f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": the object has '
                        "been modified; please apply your changes to the latest version and try again")

    async def _collect_garbage(self) -> None:
        """Delete objects whose every owner is gone (the cluster's garbage collector, background mode): after a
        deletion, and after a creation that names an owner which no longer exists."""
        async with self._lock:
            live_uids = {obj.raw.get("metadata", {}).get("uid")
                         for obj in self._objects.values() if not obj.deleted}
            orphans = []
            for key, obj in self._objects.items():
                if obj.deleted:
                    continue
                owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
                if owners and not any(owner.get("uid") in live_uids for owner in owners):
                    orphans.append(key)
            for key in orphans:
                resource = key[0]
                raw = self._objects[key].raw
                self._objects[key].delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})


def crd_resource_info() -> tuple[str, kmock.ResourceInfo]:
    """The FederatedTask resource as the CRD declares it (the fallback mirrors docs/internals.md)."""
    if CRD_PATH.exists():
        crd = next(doc for doc in yaml.safe_load_all(CRD_PATH.read_text())
                   if doc and doc.get("kind") == "CustomResourceDefinition")
        spec = crd["spec"]
        names = spec["names"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage", True))
        info = kmock.ResourceInfo(namespaced=spec.get("scope", "Namespaced") == "Namespaced", kind=names["kind"],
                                  singular=names.get("singular"), shortnames=names.get("shortNames", []),
                                  verbs=["create", "delete", "get", "list", "patch", "update", "watch"],
                                  subresources=["status"])
        return f"{spec['group']}/{version}/{names['plural']}", info
    return FEDERATEDTASKS, kmock.ResourceInfo(namespaced=True, kind="FederatedTask", singular="federatedtask",
                                              shortnames=["ft", "fedtask"], subresources=["status"],
                                              verbs=["create", "delete", "get", "list", "patch", "update", "watch"])


KOPF_PEERINGS = {
    "kopf.dev/v1/kopfpeerings": kmock.ResourceInfo(namespaced=True, kind="KopfPeering", singular="kopfpeering",
                                                   verbs=["get", "list", "watch", "patch", "create"]),
    "kopf.dev/v1/clusterkopfpeerings": kmock.ResourceInfo(namespaced=False, kind="ClusterKopfPeering",
                                                          singular="clusterkopfpeering",
                                                          verbs=["get", "list", "watch", "patch", "create"]),
}


class EmulatedCluster:
    """An emulated API server on a free port with a kubeconfig pointing at it; use as a context manager."""

    def __init__(self, workdir: pathlib.Path, namespaces: tuple[str, ...] = ("default",)):
        self.workdir = pathlib.Path(workdir)
        self.namespaces = namespaces
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self._stack = None
        self.emulator: FedtaskEmulator | None = None
        self.url = ""
        self.kubeconfig = self.workdir / "kubeconfig.yaml"

    # -- lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> EmulatedCluster:
        self._thread.start()
        self.call(self._start())
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
        }))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

    async def _start(self) -> None:
        import contextlib

        self._stack = contextlib.AsyncExitStack()
        self.emulator = await self._stack.enter_async_context(FedtaskEmulator())
        server = await self._stack.enter_async_context(kmock.Server(self.emulator))
        self.url = f"http://{server.host}:{server.port}"
        self.emulator.resources.load_bundled()
        resource, info = crd_resource_info()
        self.emulator.resources[resource] = info
        for resource, info in KOPF_PEERINGS.items():
            self.emulator.resources[resource] = info
        self._sweeper = asyncio.ensure_future(self._sweep_garbage())
        for namespace in self.namespaces:
            self.emulator.objects[NAMESPACES, None, namespace] = {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "uid": str(uuid.uuid4()), "resourceVersion": "1"}}

    async def _sweep_garbage(self) -> None:
        """The garbage collector also sweeps periodically, as the cluster's does (it is eventually consistent)."""
        while True:
            await asyncio.sleep(0.5)
            await self.emulator._collect_garbage()

    async def _stop(self) -> None:
        self._sweeper.cancel()
        await self._stack.aclose()

    def call(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    # -- reading the stored state (no HTTP: assertions see exactly what the server holds) -------------------
    def objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        async def read():
            async with self.emulator._lock:
                return [copy.deepcopy(obj.raw) for (res, ns, _), obj in self.emulator.objects.items()
                        if str(res) == str(kmock.resource(resource)) and not obj.deleted
                        and (namespace is None or ns == namespace)]
        return self.call(read())

    def get(self, resource: str, namespace: str | None, name: str) -> dict | None:
        for obj in self.objects(resource, namespace):
            if obj.get("metadata", {}).get("name") == name:
                return obj
        return None

    def history(self, resource: str) -> Iterator[dict]:
        """Every version ever stored of every object of a resource (deleted ones included)."""
        async def read():
            async with self.emulator._lock:
                return [copy.deepcopy(version.raw) for (res, _, _), obj in self.emulator.objects.items()
                        if str(res) == str(kmock.resource(resource))
                        for version in obj.history if version is not None]
        return iter(self.call(read()))

    def requests(self) -> list[dict]:
        """Every Kubernetes API call served so far: verb, resource, namespace, subresource, user agent."""
        async def read():
            return [{"action": str(req.action.value) if req.action else None, "method": str(req.method.value),
                     "resource": req.resource, "namespace": req.namespace, "name": req.name,
                     "subresource": req.subresource, "params": dict(req.params),
                     "user_agent": req.headers.get("User-Agent", "")}
                    for req in list(self.emulator._requests) if req.resource is not None]
        return self.call(read())

    # -- the tests' own writes (the test kubelet, node fixtures), through the HTTP API ------------------------
    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"User-Agent": TEST_USER_AGENT, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/merge-patch+json" if method == "PATCH" else "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode(errors="replace")[:300]) from None

    def apply(self, manifest: dict) -> dict:
        """Create an object, as `kubectl create` would."""
        namespace = manifest.get("metadata", {}).get("namespace") or "default"
        return self.request("POST", collection_path(manifest["apiVersion"], manifest["kind"], namespace), manifest)

    def patch(self, resource: str, namespace: str | None, name: str, patch: dict, subresource: str = "") -> dict:
        """Merge-patch an object (cordon a node, suspend a task, move a pod's phase)."""
        path = resource_path(resource, namespace) + f"/{name}" + (f"/{subresource}" if subresource else "")
        return self.request("PATCH", path, patch)

    def delete(self, resource: str, namespace: str | None, name: str) -> dict:
        return self.request("DELETE", resource_path(resource, namespace) + f"/{name}")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def resource_path(resource: str, namespace: str | None) -> str:
    """`v1/pods` or `group/version/plural` -> the URL path of its collection."""
    *group_version, plural = resource.split("/")
    prefix = "/api/" + group_version[0] if len(group_version) == 1 else "/apis/" + "/".join(group_version)
    return prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    plural = {"Node": "nodes", "Pod": "pods", "Namespace": "namespaces", "Event": "events",
              "KopfPeering": "kopfpeerings", "ClusterKopfPeering": "clusterkopfpeerings"}.get(kind)
    if plural is None:
        return resource_path(FEDERATEDTASKS, namespace)
    cluster_scoped = kind in ("Node", "Namespace", "ClusterKopfPeering")
    return resource_path(f"{api_version}/{plural}", None if cluster_scoped else namespace)


def make_node(name: str, cpu: str = "4", memory: str = "8Gi", gpus: int = 0, labels: dict | None = None,
              ready: bool = True, unschedulable: bool = False, taints: list | None = None) -> dict:
    """A Node as the kubelet would register it; a device node only when `labels` say so."""
    node = synthetic.make_node(name, cpu, memory, gpus, ready=ready, unschedulable=unschedulable, taints=taints)
    node["metadata"]["labels"] = {"kubernetes.io/hostname": name, **(labels or {})}
    return node
