"""`fedtask get` and `fedtask describe`: the `kubectl get ft` / `kubectl describe ft` views of a `fedtask run` workdir.

    fedtask get [NAME...] [--workdir DIR] [-o wide|json|yaml]
    fedtask describe NAME... [--workdir DIR]

The table's columns are the CRD's printer columns (core/crd.py), read from `DIR/<task>/federatedtask.json`, so the
local view and the cluster's view cannot drift apart. `describe` adds the spec's essentials, the conditions, the
last rounds and the task's events (`DIR/<task>/events.jsonl`).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from fedtask_operator.core.compaction import round_count
from fedtask_operator.core.conditions import parse_time
from fedtask_operator.core.crd import PRINTER_COLUMNS
from fedtask_operator.core.phases import PENDING

DEFAULT_WORKDIR = "./fedtask-runs"
EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2
TASK_FILE = "federatedtask.json"
EVENTS_FILE = "events.jsonl"
DESCRIBE_ROUNDS = 5


class WorkdirError(Exception):
    pass


def read_tasks(workdir: Path, names: list[str]) -> list[dict]:
    """The tasks of a workdir (all of them, or the named ones in that order); WorkdirError names what is missing."""
    if not workdir.is_dir():
        raise WorkdirError(f"{workdir}: no such workdir (fedtask run --workdir DIR writes one)")
    if not names:
        names = sorted(path.parent.name for path in workdir.glob(f"*/{TASK_FILE}"))
    tasks, missing = [], []
    for name in names:
        path = workdir / name / TASK_FILE
        try:
            tasks.append(json.loads(path.read_text()))
        except FileNotFoundError:
            missing.append(name)
        except (OSError, ValueError) as error:
            raise WorkdirError(f"{path}: unreadable task record: {error}") from error
    if missing:
        raise WorkdirError(f"{workdir}: no task named {', '.join(missing)}")
    return tasks


def json_path_value(obj: dict, path: str):
    """The value at a printer column's simple JSONPath (`.status.phase`); None when any step is missing."""
    value = obj
    for key in path.lstrip(".").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def format_age(timestamp: str | None, now: datetime) -> str:
    """kubectl's short age: 45s, 12m, 3h, 2d."""
    if not timestamp:
        return "<unknown>"
    seconds = max(0, int((now - parse_time(timestamp)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_cell(column: dict, value, now: datetime) -> str:
    if column["type"] == "date":
        return format_age(value, now)
    if value is None:
        return ""
    if column["type"] == "number" and isinstance(value, (int, float)):
        return f"{value:.4f}"
    return str(value)


def build_table(tasks: list[dict], now: datetime, wide: bool = False) -> str:
    """`kubectl get ft`: NAME and the CRD's printer columns (with -o wide also the namespace and the message)."""
    header = ["NAMESPACE"] if wide else []
    header += ["NAME"] + [column["name"].upper() for column in PRINTER_COLUMNS] + (["MESSAGE"] if wide else [])
    rows = [header]
    for task in tasks:
        metadata = task.get("metadata") or {}
        row = [metadata.get("namespace") or "default"] if wide else []
        row += [metadata.get("name", "")]
        row += [format_cell(column, json_path_value(task, column["jsonPath"]), now) for column in PRINTER_COLUMNS]
        if wide:
            row.append((task.get("status") or {}).get("message") or "")
        rows.append(row)
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def read_events(workdir: Path, name: str) -> list[dict]:
    path = workdir / name / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill while it was written
    return events


def build_description(task: dict, events: list[dict], now: datetime) -> str:
    """`kubectl describe ft`: identity, the spec's essentials, status, conditions, recent rounds and events."""
    metadata, spec, status = task.get("metadata") or {}, task.get("spec") or {}, task.get("status") or {}
    model, data, devices = spec.get("model") or {}, spec.get("data") or {}, spec.get("devices") or {}
    rounds, aggregation = spec.get("rounds") or {}, spec.get("aggregation") or {}
    created = metadata.get("creationTimestamp")
    partition = data.get("partition") or {}
    partition = partition.get("scheme", "") if isinstance(partition, dict) else partition
    lines = [
        f"Name:         {metadata.get('name', '')}",
        f"Namespace:    {metadata.get('namespace') or 'default'}",
        f"Created:      {created or '<unknown>'} ({format_age(created, now)} ago)",
        "Spec:",
        f"  Model:      {model.get('name', '')}",
        f"  Data:       {data.get('dataset', '')} ({data.get('source', '')}, partition {partition})",
        f"  Devices:    {devices.get('perRound', '')} per round of {devices.get('count') or 'every qualifying node'}",
        f"  Rounds:     max {rounds.get('max', '')}",
        f"  Strategy:   {aggregation.get('strategy', '')}",
        "Status:",
        f"  Phase:      {status.get('phase') or PENDING}",
        f"  Round:      {status.get('round', 0)}",
        f"  Stage:      {status.get('stage', '')}",
        f"  Accuracy:   {format_cell({'type': 'number'}, status.get('accuracy'), now) or '<none>'}",
        f"  Message:    {status.get('message', '')}",
    ]
    if (status.get("model") or {}).get("uri"):
        lines.append(f"  Model URI:  {status['model']['uri']}")
    lines.append("Conditions:")
    conditions = status.get("conditions") or []
    lines += _columns(["Type", "Status", "Reason", "Message"],
                      [[c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", "")]
                       for c in conditions]) if conditions else ["  <none>"]
    history = (status.get("history") or [])[-DESCRIBE_ROUNDS:]
    lines.append(f"Rounds (last {DESCRIBE_ROUNDS}):" if history else "Rounds:")
    lines += _columns(["Round", "Devices", "Returned", "Accuracy", "Seconds"],
                      [[str(h.get("round", "")), str(round_count(h, "devices")), str(round_count(h, "returned")),
                        format_cell({"type": "number"}, h.get("accuracy"), now),
                        format_cell({"type": "number"}, h.get("durationSeconds"), now)]
                       for h in history]) if history else ["  <none>"]
    lines.append("Events:")
    lines += _columns(["Type", "Reason", "Age", "Message"],
                      [[e.get("type", ""), e.get("reason", ""), format_age(e.get("time"), now), e.get("message", "")]
                       for e in events]) if events else ["  <none>"]
    return "\n".join(lines)


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    table = [header, ["-" * len(cell) for cell in header], *rows]
    widths = [max(len(row[index]) for row in table) for index in range(len(header))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"fedtask {command}",
                                     description=f"Show the tasks of a `fedtask run` workdir as `kubectl {command} ft` "
                                                 "would.")
    parser.add_argument("names", nargs="*" if command == "get" else "+", metavar="NAME", help="task names")
    parser.add_argument("--workdir", metavar="DIR", default=DEFAULT_WORKDIR,
                        help=f"the workdir of `fedtask run` (default {DEFAULT_WORKDIR})")
    if command == "get":
        parser.add_argument("-o", "--output", choices=["wide", "json", "yaml"], help="output format")
    return parser


def get_main(argv: list[str]) -> int:
    args = _parser("get").parse_args(argv)
    try:
        tasks = read_tasks(Path(args.workdir), args.names)
    except WorkdirError as error:
        print(f"fedtask get: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.output in ("json", "yaml"):
        listing = {"apiVersion": "v1", "kind": "List", "items": tasks}
        if args.output == "json":
            print(json.dumps(listing, indent=2))
        else:
            import yaml

            print(yaml.safe_dump(listing, sort_keys=False), end="")
        return EXIT_OK
    if not tasks:
        print(f"No tasks in {args.workdir}.", file=sys.stderr)
        return EXIT_OK
    print(build_table(tasks, datetime.now(UTC), wide=args.output == "wide"))
    return EXIT_OK


def describe_main(argv: list[str]) -> int:
    args = _parser("describe").parse_args(argv)
    workdir = Path(args.workdir)
    try:
        tasks = read_tasks(workdir, args.names)
    except WorkdirError as error:
        print(f"fedtask describe: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    now = datetime.now(UTC)
    print("\n\n".join(build_description(task, read_events(workdir, task["metadata"]["name"]), now)
                      for task in tasks))
    return EXIT_OK
