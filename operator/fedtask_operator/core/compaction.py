"""Bounded status: a FederatedTask's status stays far below etcd's request limit at any task size (pure).

The planner works on the full records (`expand`) and stores the compact form (`compact`); every reader of
`status.devices` goes through `round_devices`. What the compact form keeps:

- **This round's devices.** Up to PACK_DEVICES_ABOVE devices keep their full records in `status.devices`. A larger
  round keeps one short row per device in `status.deviceRows` ("<device> <node index> <state><attempts>" and, when
  they apply, "n<samples>", "t<seconds after roundStartTime the current pod started>", "e<reason index>", and for a
  store outage "o<outages>", "s<outageSince>", "w<retryAfter>" as offsets like "t") with the
  node names in `status.deviceNodes` and the distinct failure reasons in `status.deviceReasons` (at most
  REASON_LIMIT; later ones read "see the DeviceFailed events"). A row drops what the planner does not read again:
  the pod name (derived: naming.train_pod_name), finishTime, and every result field but num_samples.
- **Round records** (`currentRound`, `history`): counts (deviceCount, returnedCount, excludedCount, rejectedCount)
  always; the device lists hold at most ROUND_LIST_LIMIT names in `currentRound` and the newest DETAILED_ROUNDS
  history records; older records keep lists of up to OLD_ROUND_LIST_LIMIT names and drop longer ones (the counts,
  accuracy, loss, times and the model URI stay).
- **Ledgers.** Every device `participation` does not name trained `participationDefault` rounds (0 when absent).
  A ledger of more than LEDGER_LIMIT devices is compacted: the default becomes the most common count over the
  task's devices, and the ledger names the devices that differ from it, at most LEDGER_LIMIT, the farthest first
  (beyond that a device's count is rounded to the default: the only loss). `trainSecondsEstimate` keeps the
  LEDGER_LIMIT estimates farthest from their median; the scheduler calibrates the devices without one from the
  others (scheduling.node_candidates / shards).
- **`assignment`** keeps its first ROUND_LIST_LIMIT entries and says how many there were (`assignmentCount`).
"""
from __future__ import annotations

import copy
import json
import math
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, timedelta
from typing import Any

from fedtask_operator.core import naming
from fedtask_operator.core.conditions import parse_time
from fedtask_operator.core.phases import (
    STATE_EXCLUDED,
    STATE_FAILED,
    STATE_PENDING,
    STATE_RUNNING,
    STATE_SUCCEEDED,
)
from fedtask_operator.core.status_types import DeviceStatusDict, RoundRecordDict, TaskStatusDict

PACK_DEVICES_ABOVE = 100
ROUND_LIST_LIMIT = 100
DETAILED_ROUNDS = 10
OLD_ROUND_LIST_LIMIT = 10
LEDGER_LIMIT = 2000
REASON_LIMIT = 50
REASON_LENGTH = 300
REASON_NOT_KEPT = "the reason is not kept in the status of a round this large: see the DeviceFailed events"

_STATE_CODES = {STATE_PENDING: "P", STATE_RUNNING: "R", STATE_SUCCEEDED: "S", STATE_FAILED: "F", STATE_EXCLUDED: "X"}
_CODE_STATES = {code: state for state, code in _STATE_CODES.items()}
_ROUND_LISTS = (("devices", "deviceCount"), ("returned", "returnedCount"), ("excluded", "excludedCount"),
                ("rejected", "rejectedCount"))
_PACKED_KEYS = ("deviceRows", "deviceNodes", "deviceReasons")


class CompactionError(ValueError):
    """A packed row the planner cannot read (written by something else than `compact`)."""


# --------------------------------------------------------------------------------------------------------------------
# Reading


def round_devices(status: TaskStatusDict, task_name: str) -> list[DeviceStatusDict]:
    """This round's device records, full (`status.devices`) or unpacked from `status.deviceRows`."""
    rows = status.get("deviceRows")
    if not rows:
        return list(status.get("devices") or [])
    nodes = status.get("deviceNodes") or []
    reasons = status.get("deviceReasons") or []
    round_ = int(status.get("round") or 0)
    start = status.get("roundStartTime")
    return [_unpack_row(row, nodes, reasons, task_name, round_, start) for row in rows]


def expand(status: TaskStatusDict, task_name: str) -> TaskStatusDict:
    """A deep copy of `status` with this round's devices as full records (what the planner works on)."""
    expanded = copy.deepcopy(status)
    if status.get("deviceRows"):
        expanded["devices"] = round_devices(status, task_name)
    for key in _PACKED_KEYS:
        expanded.pop(key, None)  # type: ignore[misc]
    return expanded


def round_count(record: RoundRecordDict, key: str) -> int:
    """How many devices a round record lists under `key` (devices, returned, excluded, rejected)."""
    counts = dict(_ROUND_LISTS)
    plain: dict[str, Any] = dict(record)
    count = plain.get(counts[key])
    if isinstance(count, int):
        return count
    return len(plain.get(key) or [])


# --------------------------------------------------------------------------------------------------------------------
# Writing


def compact(status: TaskStatusDict, universe: Iterable[str] = ()) -> TaskStatusDict:
    """`status` in its bounded form (in place; returned for convenience). `universe`: the task's devices as far as
    the runtime knows them (they count for the participation ledger's default even before they trained)."""
    devices = status.get("devices") or []
    for key in _PACKED_KEYS:
        status.pop(key, None)  # type: ignore[misc]
    if len(devices) > PACK_DEVICES_ABOVE:
        _pack_devices(status, devices)
    if status.get("currentRound"):
        _cap_round(status["currentRound"], keep_lists=True)
    history = status.get("history") or []
    for index, record in enumerate(history):
        _cap_round(record, keep_lists=index >= len(history) - DETAILED_ROUNDS)
    if "participation" in status:
        _cap_participation(status, universe)
    if "trainSecondsEstimate" in status:
        _cap_estimates(status)
    assignment = status.get("assignment") or []
    if len(assignment) > ROUND_LIST_LIMIT or "assignmentCount" in status:
        status["assignmentCount"] = max(len(assignment), int(status.get("assignmentCount") or 0))
        status["assignment"] = assignment[:ROUND_LIST_LIMIT]
    return status


def count_round(record: RoundRecordDict) -> None:
    """Set a round record's counts from its (full) lists."""
    for key, count_key in _ROUND_LISTS:
        if key in record:
            record[count_key] = len(record[key])  # type: ignore[literal-required]


def _cap_round(record: RoundRecordDict, keep_lists: bool) -> None:
    for key, count_key in _ROUND_LISTS:
        if key not in record:
            continue
        names: list[str] = record[key]  # type: ignore[literal-required]
        record.setdefault(count_key, len(names))  # type: ignore[misc]
        if not keep_lists and len(names) > OLD_ROUND_LIST_LIMIT:
            del record[key]  # type: ignore[misc]
        elif len(names) > ROUND_LIST_LIMIT:
            record[key] = names[:ROUND_LIST_LIMIT]  # type: ignore[literal-required]


def participation_default(status: TaskStatusDict) -> int:
    """The participation of every device `status.participation` does not name."""
    return int(status.get("participationDefault") or 0)


def _cap_participation(status: TaskStatusDict, universe: Iterable[str]) -> None:
    """The default becomes the most common count over the task's devices (`universe`, plus every device the ledger
    names; without a universe it stays as it is); the ledger keeps the devices that differ from it, at most
    LEDGER_LIMIT, the farthest first. A ledger within the limit stays as it is."""
    ledger = status.get("participation") or {}
    if len(ledger) <= LEDGER_LIMIT:
        return
    default = participation_default(status)
    counts = {device: default for device in universe}
    counts.update(ledger)
    if not counts:
        return
    if universe:  # else the devices the ledger does not name are unknown: they keep the default they have
        tally = Counter(counts.values())
        default = max(tally, key=lambda count: (tally[count], -count))  # the most common; of equals, the lowest
    differing = sorted(((device, count) for device, count in counts.items() if count != default),
                       key=lambda item: (-abs(item[1] - default), item[0]))
    status["participation"] = dict(sorted(differing[:LEDGER_LIMIT]))
    if default:
        status["participationDefault"] = default
    else:
        status.pop("participationDefault", None)


def _cap_estimates(status: TaskStatusDict) -> None:
    estimates = status.get("trainSecondsEstimate") or {}
    if len(estimates) <= LEDGER_LIMIT:
        return
    values = sorted(estimates.values())
    middle = values[len(values) // 2]

    def distance(item: tuple[str, float]) -> tuple[float, str]:
        value = item[1]
        spread = abs(math.log(max(value, 1e-3) / max(middle, 1e-3)))
        return (-spread, item[0])

    kept = sorted(estimates.items(), key=distance)[:LEDGER_LIMIT]
    status["trainSecondsEstimate"] = dict(sorted(kept))


def _pack_devices(status: TaskStatusDict, devices: list[DeviceStatusDict]) -> None:
    nodes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    start = status.get("roundStartTime")
    rows = []
    for record in devices:
        node = nodes.setdefault(record.get("node", ""), len(nodes))
        state = _STATE_CODES.get(record.get("state") or STATE_PENDING, "P")
        row = f"{record['device']} {node} {state}{int(record.get('attempts') or 0)}"
        samples = (record.get("result") or {}).get("num_samples")
        if type(samples) is int and samples >= 0:
            row += f" n{samples}"
        offset = _offset(start, record.get("startTime"))
        if offset:
            row += f" t{offset}"
        if record.get("outages"):
            row += f" o{int(record['outages'])}"
        if record.get("outageSince"):
            row += f" s{_offset(start, record.get('outageSince')) or 0}"
        if record.get("retryAfter"):
            row += f" w{_offset(start, record.get('retryAfter')) or 0}"
        reason = record.get("reason")
        if reason:
            reason = reason[:REASON_LENGTH]
            if reason not in reasons and len(reasons) >= REASON_LIMIT:
                reason = REASON_NOT_KEPT
            row += f" e{reasons.setdefault(reason, len(reasons))}"
        rows.append(row)
    status["deviceRows"] = rows
    status["deviceNodes"] = list(nodes)
    if reasons:
        status["deviceReasons"] = list(reasons)
    status.pop("devices", None)


def _offset(start: str | None, moment: str | None) -> str:
    """Seconds from `start` to `moment` as a short decimal ("" when they are equal or either is unknown)."""
    if not start or not moment or start == moment:
        return ""
    seconds = (parse_time(moment) - parse_time(start)).total_seconds()
    return f"{seconds:.3f}".rstrip("0").rstrip(".") if seconds else ""


def _unpack_row(row: str, nodes: list[str], reasons: list[str], task_name: str, round_: int,
                start: str | None) -> DeviceStatusDict:
    parts = row.split(" ")
    try:
        device, node_index, state_code = parts[0], int(parts[1]), parts[2]
        state, attempts = _CODE_STATES[state_code[0]], int(state_code[1:])
        record: DeviceStatusDict = {"device": device, "node": nodes[node_index],
                                    "pod": naming.train_pod_name(task_name, round_, device, attempts),
                                    "state": state, "attempts": attempts}
        moment = start
        for part in parts[3:]:
            kind, value = part[0], part[1:]
            if kind == "n":
                record["result"] = {"num_samples": int(value)}
            elif kind == "t" and start:
                moment = _after(start, value)
            elif kind == "o":
                record["outages"] = int(value)
            elif kind == "s" and start:
                record["outageSince"] = _after(start, value)
            elif kind == "w" and start:
                record["retryAfter"] = _after(start, value)
            elif kind == "e":
                record["reason"] = reasons[int(value)]
            else:
                raise ValueError(f"unknown field {part!r}")
    except (ValueError, IndexError, KeyError) as error:
        raise CompactionError(f"status.deviceRows: cannot read {row!r} ({error})") from error
    if moment:
        record["startTime"] = moment
    return record


def _after(start: str, seconds: str) -> str:
    moment = parse_time(start) + timedelta(seconds=float(seconds))
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def serialized_size(status: Any) -> int:
    """Bytes of `status` as JSON (what the API server stores, within a few percent)."""
    return len(json.dumps(status, separators=(",", ":")).encode())
