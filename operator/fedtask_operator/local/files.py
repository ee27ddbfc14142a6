"""The records the local runtime keeps in files (the store, the process kubelet, the fork server): JSON written
atomically, and the UTC time stamps in them."""
from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from fedtask_operator.core.conditions import format_time


def write_json_atomic(path: Path, data: dict) -> None:
    """Write a temporary file, then rename it over `path`: a reader (or a run killed at any instant) sees the old
    record or the new one, never a part. Missing parent folders are created."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, separators=(",", ":")) + "\n"  # one dumps call: json.dump would encode in Python chunks
    try:
        handle = open(tmp, "w")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(tmp, "w")
    with handle:
        handle.write(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """A JSON record, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def now_utc() -> datetime:
    return datetime.now(UTC)


def utc_timestamp() -> str:
    """Now in the form Kubernetes writes times (2026-11-28T04:41:03Z)."""
    return format_time(now_utc())
