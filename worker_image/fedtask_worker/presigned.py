"""Store access through presigned URLs only (the operator's per-pod grants): no store credentials in the pod.

The operator holds the store's keys and signs, for each pod, short-lived SigV4 URLs for exactly the objects its stage
reads (GET) and writes (PUT). The pod gets them in one of two environment variables:

- `FEDTASK_STORE_ACCESS`: the grants themselves, as JSON (few URLs: a train pod's global model and update);
- `FEDTASK_STORE_ACCESS_URL`: one presigned GET URL of an access manifest, an object of the same JSON the operator
  wrote to the store (many URLs: an aggregate pod's hundreds of updates would not fit a pod's environment).

The JSON is `{"expires": "<RFC 3339>", "objects": {"s3://bucket/key": {"GET": url, "PUT": url}, ...}}`; it is parsed
as JSON only (never unpickled) and bounded in size. Any S3-compatible store serves these URLs with plain HTTP, so
this works without MinIO's admin API. A URI without a grant for the method is refused here, before any request,
saying so; the store itself refuses everything else (403). Ranged reads, streamed downloads with size checks and the
retries of `store.with_retries` work as with credentials; listing does not (the operator names every update).
"""
from __future__ import annotations

import json
import os
import re

from .errors import BadInput

ACCESS_ENV = "FEDTASK_STORE_ACCESS"
ACCESS_URL_ENV = "FEDTASK_STORE_ACCESS_URL"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # 1000 updates' URLs are about 1 MB
MAX_SINGLE_PUT = 5 * 1024 ** 3  # S3's limit for one PUT; multipart needs a URL per part
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted"}


class HTTPStatusError(Exception):
    """The store answered a presigned request with an error status (code and message from its XML body)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code or status}: {message}" if message else (code or f"HTTP {status}"))
        self.status, self.code, self.message = status, code, message

    @property
    def transient(self) -> bool:
        return self.status in _TRANSIENT_STATUS or self.code in _TRANSIENT_CODES

    @property
    def missing(self) -> bool:
        return self.status == 404


def enabled() -> bool:
    return bool(os.environ.get(ACCESS_ENV) or os.environ.get(ACCESS_URL_ENV))


_http = None
_grants: dict[tuple, dict[str, dict[str, str]]] = {}


def http():
    """One connection pool per process; our own retry loop (store.with_retries) handles failures."""
    global _http
    import urllib3

    if _http is None or _http[0] != os.getpid():
        _http = (os.getpid(), urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), retries=False,
                                                  maxsize=8))
    return _http[1]


def _error(response) -> HTTPStatusError:
    try:
        text = response.read(4096).decode("utf-8", errors="replace")
    finally:
        response.close()  # the rest of an error body is never read: the connection is dropped, not reused
        response.release_conn()
    code = re.search(r"<Code>([^<]{1,100})</Code>", text)
    message = re.search(r"<Message>([^<]{1,300})</Message>", text)
    return HTTPStatusError(response.status, code.group(1) if code else "", message.group(1) if message else "")


def request(method: str, url: str, *, headers: dict | None = None, body=None):
    """A streaming HTTP response with a 2xx status (the caller releases it); HTTPStatusError otherwise."""
    response = http().request(method, url, headers=headers or {}, body=body, preload_content=False,
                              redirect=False)
    if 200 <= response.status < 300:
        return response
    raise _error(response)


def request_data(method: str, url: str, *, headers: dict | None = None, body=None) -> bytes:
    """The whole body of a 2xx answer; HTTPStatusError otherwise."""
    response = request(method, url, headers=headers, body=body)
    try:
        return response.read()
    finally:
        response.release_conn()


def parse_grants(text: str | bytes, source: str) -> dict[str, dict[str, str]]:
    """{uri: {method: url}} from the access JSON; BadInput naming `source` when it is not that shape."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise BadInput(f"{source}: the store access grants are not JSON ({error})") from None
    objects = value.get("objects") if isinstance(value, dict) else None
    if not isinstance(objects, dict) or not all(
            isinstance(uri, str) and isinstance(methods, dict)
            and all(m in ("GET", "PUT") and isinstance(u, str) for m, u in methods.items())
            for uri, methods in objects.items()):
        raise BadInput(f"{source}: the store access grants must be {{\"objects\": {{\"s3://bucket/key\": "
                       "{\"GET\"|\"PUT\": url}}}}")
    return objects


def grants() -> dict[str, dict[str, str]]:
    inline, url = os.environ.get(ACCESS_ENV, ""), os.environ.get(ACCESS_URL_ENV, "")
    key = (inline, url, os.getpid())
    found = _grants.get(key)
    if found is not None:
        return found
    if inline:
        found = parse_grants(inline, ACCESS_ENV)
    else:
        from .store import with_retries

        def get() -> bytes:
            response = request("GET", url)
            try:
                data = response.read(MAX_MANIFEST_BYTES + 1)
            finally:
                response.close()
                response.release_conn()
            if len(data) > MAX_MANIFEST_BYTES:
                raise BadInput(f"{ACCESS_URL_ENV}: the access manifest is over {MAX_MANIFEST_BYTES} bytes")
            return data

        found = parse_grants(with_retries("the store access manifest", "read", get), ACCESS_URL_ENV)
    _grants.clear()
    _grants[key] = found
    return found


def url_for(uri: str, method: str) -> str:
    url = grants().get(uri, {}).get(method)
    if not url:
        what = "read" if method == "GET" else "write"
        raise BadInput(f"{uri}: this pod may not {what} it (presigned store access: the operator grants each pod "
                       "only the objects its stage reads and writes)")
    return url


# --------------------------------------------------------------------------------------------------------------------
# The store operations (store.py calls these for s3:// URIs when enabled()), each inside store.with_retries.


def put_file(uri: str, source_path: str, size: int) -> None:
    from .store import with_retries

    if size > MAX_SINGLE_PUT:
        raise BadInput(f"{uri}: {size} bytes is over the {MAX_SINGLE_PUT} bytes one presigned PUT may carry")
    url = url_for(uri, "PUT")

    def put() -> None:
        with open(source_path, "rb") as stream:
            request_data("PUT", url, headers={"Content-Length": str(size)}, body=stream)

    with_retries(uri, "write", put)


def put_bytes(uri: str, data: bytes | memoryview) -> None:
    from .store import with_retries

    url = url_for(uri, "PUT")
    with_retries(uri, "write", lambda: request_data("PUT", url, headers={"Content-Length": str(len(data))},
                                               body=bytes(data)))


def get_bytes(uri: str) -> bytes:
    from .store import with_retries

    url = url_for(uri, "GET")
    return with_retries(uri, "read", lambda: request_data("GET", url))


def probe(uri: str, count: int) -> tuple[int, bytes]:
    """(size, first `count` bytes) with one ranged GET; NotFound when there is no such object."""
    from .store import NotFound, reported_size, with_retries

    url = url_for(uri, "GET")

    def get() -> tuple[int, bytes]:
        try:
            response = request("GET", url, headers={"Range": f"bytes=0-{max(count, 1) - 1}"})
        except HTTPStatusError as error:
            if error.missing:
                raise NotFound(f"{uri}: no such object") from None
            if error.status == 416:  # a range of an empty object
                return 0, b""
            raise
        try:
            return reported_size(uri, response), response.read(count)[:count]
        finally:
            if response.status != 206:
                response.close()  # the rest of a 200 answer is never read: the connection is dropped, not reused
            response.release_conn()

    return with_retries(uri, "read", get)


def download(uri: str, path: str, max_bytes: int | None, chunk: int) -> int:
    from .store import save_stream, with_retries

    url = url_for(uri, "GET")

    def get() -> int:
        response = request("GET", url)
        try:
            return save_stream(uri, path, response.stream(chunk), max_bytes)
        finally:
            response.release_conn()

    return with_retries(uri, "read", get)


def exists(uri: str) -> bool:
    from .store import with_retries

    url = url_for(uri, "GET")

    def get() -> bool:
        try:
            response = request("GET", url, headers={"Range": "bytes=0-0"})
        except HTTPStatusError as error:
            if error.missing:
                return False
            if error.status == 416:  # an empty object
                return True
            raise
        response.close()
        response.release_conn()
        return True

    return with_retries(uri, "stat", get)
