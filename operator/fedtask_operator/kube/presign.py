"""Per-pod presigned store access (`--presigned-urls`): pods get URLs for their own objects, never store keys.

The operator holds the store's keys (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment). Right before it
creates a pod of a task without `spec.storage.secretRef`, it signs (SigV4, locally: the region is set, so minio makes
no request for it) one GET URL per object the pod's stage reads and one PUT URL per object it writes, exactly the
`s3://` URIs of the pod's command (core/store_access.pod_store_grants):

- train: GET the round's global model, PUT its own update;
- aggregate: GET the base global model, the round's named updates and the server state, PUT the aggregate (and the
  next server state);
- adjust: GET the aggregate (and spec.data.shared.uri), PUT the next global model;
- init: GET spec.model.initialUri if any, PUT global model 0; publish: GET the final model.

The URLs last `grant_seconds` (past the planner's own deadline for the pod, at most 7 days). A pod with few URLs gets
them in FEDTASK_STORE_ACCESS (JSON); one whose URLs would make its environment larger than INLINE_LIMIT (an aggregate
of many updates) gets one URL, FEDTASK_STORE_ACCESS_URL, of an access manifest object the operator writes first to
`<base>/access/<pod>.json`. A pod's object stays small either way, and only that pod (and whoever may read its spec:
the namespace's own users, the node it runs on) learns its URLs. The worker uses them with plain HTTP
(fedtask_worker/presigned.py), so any S3-compatible store works. Nothing here lists, deletes or administers.
"""
from __future__ import annotations

import copy
import datetime
import io
import json
import threading
import time

from fedtask_operator.core import naming
from fedtask_operator.core.spec import FederatedTask
from fedtask_operator.core.store_access import access_manifest_uri, grant_seconds, pod_store_grants
from fedtask_operator.kube.credentials import store_http_client

ACCESS_ENV = "FEDTASK_STORE_ACCESS"
ACCESS_URL_ENV = "FEDTASK_STORE_ACCESS_URL"
INLINE_LIMIT = 16 * 1024  # bytes of grants JSON a pod gets in its environment; more go to a manifest object
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DEFAULT_REGION = "us-east-1"  # what MinIO and most S3-compatible stores answer when not configured otherwise


class PresignError(Exception):
    """The pod's access could not be prepared (no keys, the store refused the bucket, or the manifest's write
    failed)."""


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


class Presigner:
    """Signs a pod's grants and puts them into its manifest; `attach` is blocking (run it in a thread)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, secure: bool, region: str,
                 timeout: float = 30.0, clock=time.time):
        import minio

        if not access_key or not secret_key:
            raise PresignError("--presigned-urls needs the store's credentials in the operator's environment "
                               "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        if not endpoint:
            raise PresignError("--presigned-urls needs --store-endpoint (the store the pods reach)")
        http = store_http_client(timeout)
        # region given: presigning computes locally, without asking the store for the bucket's region
        self.client = minio.Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                                  region=region or DEFAULT_REGION, http_client=http)
        self.region = region or DEFAULT_REGION
        self.clock = clock
        self._buckets: set[str] = set()
        self._lock = threading.Lock()

    def sign(self, method: str, uri: str, seconds: int, now: datetime.datetime | None = None) -> str:
        bucket, key = split(uri)
        return self.client.get_presigned_url(method, bucket, key, expires=datetime.timedelta(seconds=seconds),
                                             request_date=now)

    def grants(self, pod: dict, seconds: int) -> dict:
        """{"expires", "objects": {uri: {"GET"|"PUT": url}}} for the pod's command."""
        now = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).replace(microsecond=0)
        reads, writes = pod_store_grants(pod)
        objects: dict[str, dict[str, str]] = {}
        for uri in reads:
            objects.setdefault(uri, {})["GET"] = self.sign("GET", uri, seconds, now)
        for uri in writes:
            objects.setdefault(uri, {})["PUT"] = self.sign("PUT", uri, seconds, now)
        expires = (now + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
        return {"expires": expires, "objects": objects}

    def _ensure_bucket(self, bucket: str) -> None:
        """Pods may not make the bucket (their URLs name objects): the operator does, once per process. A store
        that does not answer (connection error, 5xx) does not hold the pod back: it is asked again at the next pod,
        and meanwhile the pod itself waits out the outage like any store outage (exit 3, retried by the planner)."""
        import urllib3.exceptions
        from minio.error import S3Error, ServerError

        with self._lock:
            if bucket in self._buckets:
                return
        try:
            if not self.client.bucket_exists(bucket):
                try:
                    self.client.make_bucket(bucket, location=self.region)
                except S3Error as error:
                    if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
        except (ServerError, urllib3.exceptions.HTTPError, OSError):
            return
        with self._lock:
            self._buckets.add(bucket)

    def attach(self, pod: dict, task: FederatedTask, base_uri: str, manifest_uri: str) -> dict:
        """A copy of `pod` whose worker gets its presigned URLs (and no store credentials); PresignError when the
        store refuses the bucket check or the manifest."""
        stage = (pod.get("metadata", {}).get("labels") or {}).get(naming.STAGE_LABEL, "")
        seconds = grant_seconds(task, stage)
        try:
            self._ensure_bucket(split(base_uri)[0])
            access = self.grants(pod, seconds)
            text = json.dumps(access, separators=(",", ":"), sort_keys=True)
            if len(text) <= INLINE_LIMIT:
                entry = {"name": ACCESS_ENV, "value": text}
            else:
                bucket, key = split(manifest_uri)
                data = text.encode()
                self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/json")
                entry = {"name": ACCESS_URL_ENV, "value": self.sign("GET", manifest_uri, seconds)}
        except PresignError:
            raise
        except Exception as error:  # minio's S3Error, urllib3's connection errors: the store's own words
            message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            raise PresignError(f"presigned store access for pod {pod['metadata']['name']}: {message}") from None
        pod = copy.copy(pod)
        pod["spec"] = copy.copy(pod["spec"])
        containers = [dict(container) for container in pod["spec"]["containers"]]
        worker = containers[0]
        worker["env"] = [item for item in worker.get("env") or []
                         if item.get("name") not in (*CREDENTIAL_ENV, ACCESS_ENV, ACCESS_URL_ENV)] + [entry]
        pod["spec"]["containers"] = containers
        return pod


def manifest_location(task: FederatedTask, config, pod: dict) -> tuple[str, str]:
    """(the task's store base, the pod's access manifest URI)."""
    return naming.store_base(task, config), access_manifest_uri(task, config, pod["metadata"]["name"])
