"""Object store access: `s3://bucket/key` (official minio client), `file:///abs/path` and plain paths.

With FEDTASK_STORE_ACCESS or FEDTASK_STORE_ACCESS_URL set (the operator's per-pod presigned URLs), every `s3://`
object goes through presigned.py instead: plain HTTP GET/PUT on the URLs granted for it, no credentials.

Writes are atomic (temp file + rename on disk; one PUT or a completed multipart upload on S3). Transient S3 errors
are retried with exponential backoff (from 0.2 s, doubling up to FEDTASK_STORE_RETRY_MAX_DELAY_SECONDS, default 5)
and jitter (each wait 0.5-1.5x) for FEDTASK_STORE_RETRY_SECONDS (default 60); then the stage exits 3, which the
planner treats as a store outage (retried on its own budget, not counted against podRetryLimit). Permanent errors fail
fast with the URI in the message.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from . import presigned
from .errors import BadInput, TransientFailure

T = TypeVar("T")
PART_SIZE = 16 * 1024 * 1024
DOWNLOAD_CHUNK = 1024 * 1024  # larger reads make urllib3 join many socket reads into one buffer: slower, no gain
DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_RETRY_MAX_DELAY_SECONDS = 5.0
FIRST_RETRY_DELAY_SECONDS = 0.2
_TRANSIENT_S3_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                       "OperationAborted"}


@dataclasses.dataclass(frozen=True)
class Location:
    uri: str
    bucket: str | None  # None: a local path
    key: str  # the object key, or the absolute local path

    @property
    def is_local(self) -> bool:
        return self.bucket is None

    def child(self, name: str) -> Location:
        return parse_uri(self.uri.rstrip("/") + "/" + name)


def parse_uri(uri: str) -> Location:
    if not uri:
        raise BadInput("object URI is empty")
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket:
            raise BadInput(f"{uri}: no bucket in S3 URI (expected s3://bucket/key)")
        return Location(uri, bucket, key)
    if uri.startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlparse(uri).path)
        if not path.startswith("/"):
            raise BadInput(f"{uri}: file URI must hold an absolute path (file:///abs/path)")
        return Location(uri, None, path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        raise BadInput(f"{uri}: unsupported URI scheme (use s3://, file:// or a plain path)")
    return Location(uri, None, os.path.abspath(uri))


def retry_seconds() -> float:
    return _seconds_setting("FEDTASK_STORE_RETRY_SECONDS", DEFAULT_RETRY_SECONDS)


def retry_max_delay() -> float:
    return _seconds_setting("FEDTASK_STORE_RETRY_MAX_DELAY_SECONDS", DEFAULT_RETRY_MAX_DELAY_SECONDS)


def _seconds_setting(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise BadInput(f"{name}={raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise BadInput(f"{name}={raw!r} must be a finite number of seconds >= 0")
    return value


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise BadInput(f"{name}={raw!r} is not true/false")


_clients: dict[tuple, object] = {}


def s3_client():
    import minio
    import urllib3

    endpoint = os.environ.get("FEDTASK_S3_ENDPOINT", "")
    if not endpoint:
        raise BadInput("FEDTASK_S3_ENDPOINT is not set (host:port of the S3 store)")
    secure = _env_flag("FEDTASK_S3_SECURE", False)
    settings = (endpoint, secure, os.environ.get("FEDTASK_S3_REGION") or None,
                os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"), os.getpid())
    client = _clients.get(settings)
    if client is None:
        # Our own retry loop handles transient failures; urllib3's own retries would multiply the budget.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), retries=False, maxsize=8)
        client = minio.Minio(endpoint, access_key=settings[3], secret_key=settings[4], secure=secure,
                             region=settings[2], http_client=http)
        _clients.clear()
        _clients[settings] = client
    return client


def _is_transient(error: Exception) -> bool:
    import urllib3.exceptions
    from minio.error import S3Error, ServerError

    if isinstance(error, presigned.HTTPStatusError):
        return error.transient
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, S3Error):
        return error.code in _TRANSIENT_S3_CODES
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # local files around the transfer: retrying will not help
    return isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError))


def _describe(error: Exception) -> str:
    from minio.error import S3Error

    if isinstance(error, S3Error):
        return f"{error.code}: {error.message}" if error.message else error.code
    if isinstance(error, presigned.HTTPStatusError):
        return str(error)
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


def with_retries(uri: str, action: str, operation: Callable[[], T], budget: float | None = None) -> T:
    """Run an S3 operation, retrying transient failures with exponential backoff + jitter for `budget` seconds."""
    budget = retry_seconds() if budget is None else budget
    max_delay = retry_max_delay()
    deadline = time.monotonic() + budget
    delay = min(FIRST_RETRY_DELAY_SECONDS, max_delay)
    while True:
        try:
            return operation()
        except BadInput:
            raise
        except Exception as error:  # classified below
            if not _is_transient(error):
                raise BadInput(f"{uri}: {action} failed: {_describe(error)}") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransientFailure(f"{uri}: {action} still failing after {budget:g} s of retries: "
                                       f"{_describe(error)}") from None
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, max_delay)


def _ensure_bucket(client, bucket: str, uri: str) -> None:
    from minio.error import S3Error

    try:
        if client.bucket_exists(bucket):
            return
    except S3Error as error:
        # Per-namespace credentials (operator --namespace-credentials) may not look at the bucket itself: the
        # operator made it, and the write that follows says plainly if it is missing.
        if error.code in ("AccessDenied", "Forbidden"):
            return
        raise
    try:
        client.make_bucket(bucket, location=os.environ.get("FEDTASK_S3_REGION") or None)
    except S3Error as error:
        if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def write_file(uri: str, source_path: str) -> int:
    """Store the local file `source_path` at `uri` atomically; return its size."""
    location = parse_uri(uri)
    size = os.path.getsize(source_path)
    if location.is_local:
        if os.path.abspath(source_path) == location.key:
            return size
        with _atomic_local_file(location) as temporary:
            shutil.copyfile(source_path, temporary)
        return size
    if presigned.enabled():
        presigned.put_file(uri, source_path, size)
        return size

    def put() -> None:
        client = s3_client()
        _ensure_bucket(client, location.bucket, uri)
        with open(source_path, "rb") as stream:
            client.put_object(location.bucket, location.key, stream, size, part_size=PART_SIZE)

    with_retries(uri, "write", put)
    return size


def write_bytes(uri: str, data: bytes | memoryview) -> int:
    location = parse_uri(uri)
    if location.is_local:
        with _atomic_local_file(location) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(data)
        return len(data)
    if presigned.enabled():
        presigned.put_bytes(uri, data)
        return len(data)

    import io

    def put() -> None:
        client = s3_client()
        _ensure_bucket(client, location.bucket, uri)
        client.put_object(location.bucket, location.key, io.BytesIO(data), len(data), part_size=PART_SIZE)

    with_retries(uri, "write", put)
    return len(data)


@contextlib.contextmanager
def writer(uri: str) -> Iterator[str]:
    """Yield a local path to write; on success it becomes the object at `uri` atomically."""
    location = parse_uri(uri)
    if location.is_local:
        with _atomic_local_file(location) as temporary:
            yield temporary
        return
    with tempfile.TemporaryDirectory(prefix="fedtask-put-") as folder:
        path = os.path.join(folder, "object")
        yield path
        write_file(uri, path)


@contextlib.contextmanager
def _atomic_local_file(location: Location) -> Iterator[str]:
    folder = os.path.dirname(location.key)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise BadInput(f"{location.uri}: cannot create folder {folder}: {error.strerror}") from None
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, location.key)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_bytes(uri: str) -> bytes:
    location = parse_uri(uri)
    if location.is_local:
        try:
            with open(location.key, "rb") as stream:
                return stream.read()
        except OSError as error:
            raise BadInput(f"{uri}: cannot read: {error.strerror}") from None
    if presigned.enabled():
        return presigned.get_bytes(uri)

    def get() -> bytes:
        response = s3_client().get_object(location.bucket, location.key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    return with_retries(uri, "read", get)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """Yield a local file path holding the object: the file itself for local URIs, a streamed download for S3."""
    location = parse_uri(uri)
    if location.is_local:
        if not os.path.isfile(location.key):
            raise BadInput(f"{uri}: no such file")
        yield location.key
        return
    with tempfile.TemporaryDirectory(prefix="fedtask-get-") as folder:
        path = os.path.join(folder, "object")
        download(uri, path)
        yield path


class NotFound(BadInput):
    """The object does not exist (for an update: the device never uploaded it)."""


_MISSING_CODES = ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound")


def probe(uri: str, count: int = 8) -> tuple[int, bytes]:
    """(size, first `count` bytes) of an object without reading the rest: os.stat + read for local files, one
    ranged GET for S3 (its Content-Range names the size). NotFound when there is no such object."""
    location = parse_uri(uri)
    if location.is_local:
        try:
            with open(location.key, "rb") as stream:
                return os.fstat(stream.fileno()).st_size, stream.read(count)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{uri}: no such file") from None
        except OSError as error:
            raise BadInput(f"{uri}: cannot read: {error.strerror}") from None
    if presigned.enabled():
        return presigned.probe(uri, count)
    from minio.error import S3Error

    def get() -> tuple[int, bytes]:
        try:
            response = s3_client().get_object(location.bucket, location.key, offset=0, length=count)
        except S3Error as error:
            if error.code in _MISSING_CODES:
                raise NotFound(f"{uri}: no such object") from None
            if error.code == "InvalidRange":  # a range of an empty object
                return 0, b""
            raise
        try:
            return reported_size(uri, response), response.read(count)
        finally:
            response.close()  # the rest of a 200 answer is never read: the connection is dropped, not reused
            response.release_conn()

    return with_retries(uri, "read", get)


def reported_size(uri: str, response) -> int:
    """The whole object's size from a ranged GET's answer (Content-Range of a 206, else Content-Length)."""
    content_range = response.headers.get("Content-Range", "")
    total = content_range.rpartition("/")[2] if response.status == 206 else response.headers.get("Content-Length", "")
    if not total.isdigit():
        raise BadInput(f"{uri}: the store reported no object size ({content_range or 'no Content-Range'})")
    return int(total)


def save_stream(uri: str, path: str, chunks: Iterable[bytes], max_bytes: int | None) -> int:
    """Write a download's chunks to `path`; past `max_bytes` (the object grew after its size was checked), or on any
    error, remove the partial file."""
    written = 0
    try:
        with open(path, "wb") as stream:
            for chunk in chunks:
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:
                    raise BadInput(f"{uri}: more than {max_bytes} bytes (it grew after it was checked)")
                stream.write(chunk)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return os.path.getsize(path)


def download(uri: str, path: str, max_bytes: int | None = None) -> int:
    """Copy the object to the local `path`; with `max_bytes`, stop (and remove `path`) once it holds more."""
    location = parse_uri(uri)
    if location.is_local:
        if max_bytes is not None and os.path.getsize(location.key) > max_bytes:
            raise BadInput(f"{uri}: more than {max_bytes} bytes")
        shutil.copyfile(location.key, path)
        return os.path.getsize(path)
    if presigned.enabled():
        return presigned.download(uri, path, max_bytes, DOWNLOAD_CHUNK)

    def get() -> int:
        response = s3_client().get_object(location.bucket, location.key)
        try:
            return save_stream(uri, path, response.stream(DOWNLOAD_CHUNK), max_bytes)
        finally:
            response.close()
            response.release_conn()

    return with_retries(uri, "read", get)


def exists(uri: str) -> bool:
    from minio.error import S3Error

    location = parse_uri(uri)
    if location.is_local:
        return os.path.isfile(location.key)
    if presigned.enabled():
        return presigned.exists(uri)

    def stat() -> bool:
        try:
            s3_client().stat_object(location.bucket, location.key)
            return True
        except S3Error as error:
            if error.code in _MISSING_CODES:
                return False
            raise

    return with_retries(uri, "stat", stat)


def list_objects(prefix_uri: str) -> list[str]:
    """URIs of every object under a prefix (a folder for local URIs), sorted."""
    location = parse_uri(prefix_uri)
    if location.is_local:
        if not os.path.isdir(location.key):
            raise BadInput(f"{prefix_uri}: no such folder")
        base = prefix_uri.rstrip("/")
        return sorted(f"{base}/{name}" for name in os.listdir(location.key)
                      if not name.startswith(".tmp-") and os.path.isfile(os.path.join(location.key, name)))
    if presigned.enabled():
        raise BadInput(f"{prefix_uri}: listing is not possible with presigned store access (a pod gets URLs for "
                       "named objects only): give the update URIs themselves")
    prefix = location.key if not location.key or location.key.endswith("/") else location.key + "/"

    def listing() -> list[str]:
        objects = s3_client().list_objects(location.bucket, prefix=prefix, recursive=True)
        return sorted(f"s3://{location.bucket}/{item.object_name}" for item in objects)

    return with_retries(prefix_uri, "list", listing)
