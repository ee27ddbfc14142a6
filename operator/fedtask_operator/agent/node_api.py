"""The API calls of a node agent, made with the node's own credentials (`system:node:NAME` in `system:nodes`), so
the API server's Node authorizer and NodeRestriction admission decide what it may do, as for a real kubelet.

Every call returns plain dicts (the JSON the server sent), never the client's model objects.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from fedtask_operator.core.conditions import format_micro_time
from fedtask_operator.local.files import utc_timestamp

log = logging.getLogger("fedtask.agent")

MERGE_PATCH = "application/merge-patch+json"
NODE_LEASE_NAMESPACE = "kube-node-lease"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NodeApi:
    """A thin wrapper over the official `kubernetes` client for the calls a kubelet makes."""

    def __init__(self, kubeconfig: str, request_timeout: float = 30.0):
        import kubernetes

        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        self._kubernetes = kubernetes
        self.client = kubernetes.client.ApiClient(configuration)
        self.client.user_agent = "fedtask-node-agent"
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.coordination = kubernetes.client.CoordinationV1Api(self.client)
        self.timeout = request_timeout
        self.host = configuration.host

    # ------------------------------------------------------------------------------------------------------ helpers
    def _call(self, func: Callable, *args, **kwargs) -> dict:
        try:
            response = func(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
        except self._kubernetes.client.ApiException as err:
            raise _api_error(err) from None
        return json.loads(response.data or b"{}")

    def _get_or_none(self, func: Callable, *args, **kwargs) -> dict | None:
        try:
            return self._call(func, *args, **kwargs)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    # -------------------------------------------------------------------------------------------------------- nodes
    def get_node(self, name: str) -> dict | None:
        return self._get_or_none(self.core.read_node, name)

    def create_node(self, node: dict) -> dict:
        return self._call(self.core.create_node, node)

    def patch_node(self, name: str, patch: dict) -> dict:
        return self._call(self.core.patch_node, name, patch, _content_type=MERGE_PATCH)

    def patch_node_status(self, name: str, status: dict) -> dict:
        return self._call(self.core.patch_node_status, name, {"status": status}, _content_type=MERGE_PATCH)

    def renew_lease(self, node: dict, duration_seconds: int) -> None:
        """Create or renew the node's Lease in kube-node-lease (what the node lifecycle controller watches)."""
        name = node["metadata"]["name"]
        lease = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": duration_seconds,
                     "renewTime": format_micro_time(datetime.now(UTC))},
        }
        existing = self._get_or_none(self.coordination.read_namespaced_lease, name, NODE_LEASE_NAMESPACE)
        if existing is None:
            self._call(self.coordination.create_namespaced_lease, NODE_LEASE_NAMESPACE, lease)
            return
        lease["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        self._call(self.coordination.replace_namespaced_lease, name, NODE_LEASE_NAMESPACE, lease)

    # --------------------------------------------------------------------------------------------------------- pods
    def list_pods(self, node_name: str) -> tuple[list[dict], str]:
        listing = self._call(self.core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node_name}")
        return listing.get("items") or [], listing["metadata"]["resourceVersion"]

    def watch_pods(self, node_name: str, resource_version: str, timeout_seconds: int) -> Iterator[dict]:
        return self._watch(self.core.list_pod_for_all_namespaces, resource_version, timeout_seconds,
                           field_selector=f"spec.nodeName={node_name}")

    def patch_pod_status(self, namespace: str, name: str, status: dict, uid: str) -> dict | None:
        """Merge-patch the pod's status (lists such as containerStatuses are replaced whole); None when the pod is
        gone or is another pod by now (different uid)."""
        body = {"metadata": {"uid": uid}, "status": status}
        try:
            return self._call(self.core.patch_namespaced_pod_status, name, namespace, body, _content_type=MERGE_PATCH)
        except ApiError as err:
            if err.status in (404, 409):
                return None
            raise

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """Finish a deletion as a kubelet does once the containers are gone: delete with grace period 0."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        try:
            self._call(self.core.delete_namespaced_pod, name, namespace, body=body)
        except ApiError as err:
            if err.status not in (404, 409):
                raise

    def create_event(self, pod: dict, node_name: str, type_: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        moment = utc_timestamp()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "fieldPath": f"spec.containers{{{pod['spec']['containers'][0]['name']}}}"},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "kubelet", "host": node_name},
            "reportingComponent": "kubelet", "reportingInstance": node_name,
            "firstTimestamp": moment, "lastTimestamp": moment, "count": 1,
        }
        try:
            self._call(self.core.create_namespaced_event, meta["namespace"], event)
        except ApiError as err:  # events are best effort, as in a kubelet
            log.warning("event %s for %s/%s not posted: %s", reason, meta["namespace"], meta["name"], err)

    # ----------------------------------------------------------------------------------- what pods refer to
    def get_secret(self, namespace: str, name: str) -> dict | None:
        return self._get_or_none(self.core.read_namespaced_secret, name, namespace)

    def get_config_map(self, namespace: str, name: str) -> dict | None:
        return self._get_or_none(self.core.read_namespaced_config_map, name, namespace)

    def get_pvc(self, namespace: str, name: str) -> dict | None:
        return self._get_or_none(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def get_pv(self, name: str) -> dict | None:
        return self._get_or_none(self.core.read_persistent_volume, name)

    def create_token(self, pod: dict, service_account: str, audiences: list[str], expiration_seconds: int) -> dict:
        """A TokenRequest for the pod's service account, bound to the pod (deleted pod: the token stops working)."""
        meta = pod["metadata"]
        spec: dict = {"expirationSeconds": expiration_seconds,
                      "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        return self._call(self.core.create_namespaced_service_account_token, service_account, meta["namespace"], body)

    # ------------------------------------------------------------------------------------------------------ services
    def list_services(self) -> tuple[list[dict], str]:
        listing = self._call(self.core.list_service_for_all_namespaces)
        return listing.get("items") or [], listing["metadata"]["resourceVersion"]

    def watch_services(self, resource_version: str, timeout_seconds: int) -> Iterator[dict]:
        return self._watch(self.core.list_service_for_all_namespaces, resource_version, timeout_seconds)

    # --------------------------------------------------------------------------------------------------------- watch
    def _watch(self, func: Callable, resource_version: str, timeout_seconds: int, **kwargs) -> Iterator[dict]:
        """Raw watch events ({"type", "object"}) from resource_version on, until the server ends the watch.
        An ERROR event (e.g. 410 Gone: the version is too old) raises ApiError."""
        try:
            response = func(watch=True, resource_version=resource_version, timeout_seconds=timeout_seconds,
                            allow_watch_bookmarks=True, _preload_content=False,
                            _request_timeout=(self.timeout, timeout_seconds + 30), **kwargs)
        except self._kubernetes.client.ApiException as err:
            raise _api_error(err) from None
        try:
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(int(status.get("code") or 500), status.get("message") or "watch error")
                    yield event
        finally:
            response.close()
            response.release_conn()


def _api_error(err) -> ApiError:
    message = err.reason or ""
    try:
        message = json.loads(err.body).get("message") or message
    except (TypeError, ValueError, AttributeError):
        pass
    return ApiError(int(err.status or 0), message)
