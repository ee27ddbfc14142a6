"""`fedtask schedule`: dry-run device selection against `kubectl get nodes/pods -o json` dumps: the next learning
period's decision for the given tasks (its number continues from the tasks' statuses when they carry them)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from fedtask_operator.core.documents import DocumentError, load_documents
from fedtask_operator.core.scheduling.collection import next_period_number, with_default_weight
from fedtask_operator.core.scheduling.fleet import FleetError, build_fleet
from fedtask_operator.core.scheduling.matching import SelectorError
from fedtask_operator.core.scheduling.objective import DEFAULT_FAIRNESS_WEIGHT
from fedtask_operator.core.scheduling.request import build_device_request
from fedtask_operator.core.scheduling.select import POLICIES, select_devices
from fedtask_operator.core.schema import encode
from fedtask_operator.core.spec import SpecError, parse_task

USAGE_EXAMPLE = """examples:
  kubectl get nodes -o json > nodes.json; kubectl get pods -A -o json > pods.json
  fedtask schedule --nodes nodes.json --pods pods.json vision.yaml speech.yaml
  fedtask schedule --nodes nodes.json task.yaml --json --policy fastest"""


class InputError(DocumentError):
    """A file the command cannot use; the message names the file and the reason."""


def load_objects(path: str, kind: str) -> list[dict]:
    """Objects of `kind` from a `kubectl get -o json|yaml` dump: a List with items, a list, or single objects."""
    objects: list = []
    for document in load_documents(path):
        if isinstance(document, dict) and isinstance(document.get("items"), list):
            objects.extend(document["items"])
        elif isinstance(document, list):
            objects.extend(document)
        else:
            objects.append(document)
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or obj.get("kind", kind) != kind:
            found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
            raise InputError(f"{path}: item {i}: expected a {kind}, found {found!r} "
                             f"(use `kubectl get {kind.lower()}s -o json`)")
    return objects


def load_tasks(paths: list[str], now: float, policy: str | None):
    """The tasks' device requests, and their statuses (a task dumped with `kubectl get -o yaml` carries its own)."""
    requests, keys, statuses = [], set(), []
    for path in paths:
        documents = load_documents(path)
        if not documents:
            raise InputError(f"{path}: no FederatedTask in the file")
        for number, document in enumerate(documents, 1):
            where = path if len(documents) == 1 else f"{path} (document {number})"
            try:
                task = parse_task(document)
            except SpecError as error:
                raise InputError(f"{where}: {error}") from None
            if task.key in keys:
                raise InputError(f"{where}: task {task.key} given twice")
            request = build_device_request(task, now)
            if policy:
                request = replace(request, policy=policy)
            requests.append(request)
            statuses.append(encode(task.status))
            keys.add(task.key)
    return requests, statuses


def display_names(keys) -> dict[str, str]:
    """Task names as users wrote them; namespace/name only where two namespaces share a name."""
    short = [key.rsplit("/", 1)[-1] for key in keys]
    return {key: name if short.count(name) == 1 else key for key, name in zip(keys, short)}


def render_json(assignment) -> dict:
    shown = display_names(list(assignment.tasks))
    return {
        "period": assignment.period,
        "assignments": {shown[key]: [slot.node for slot in task.devices] for key, task in assignment.tasks.items()},
        "excluded": dict(assignment.excluded),
        "periodSeconds": round(assignment.period_seconds, 6),
        "cost": round(assignment.cost, 6),
        "devices": {shown[key]: [{"device": s.device, "node": s.node, "estimatedSeconds": s.estimated_seconds}
                                 for s in task.devices] for key, task in assignment.tasks.items()},
        "waiting": {shown[key]: task.waiting_reason for key, task in assignment.tasks.items() if task.waiting_reason},
        "refused": sorted(shown[key] for key, task in assignment.tasks.items() if task.rejected),
        "tasks": {shown[key]: {
            "period": task.period, "roundSeconds": round(task.round_seconds, 6),
            "timeScale": round(task.time_scale, 6), "fairnessWeight": task.fairness_weight,
            "unfairness": round(task.unfairness, 6), "jain": round(task.jain, 4), "cost": round(task.cost, 6),
            "solver": task.solver, "optimal": task.optimal,
        } for key, task in assignment.tasks.items() if not task.waiting_reason},
    }


def render_table(assignment, requests) -> str:
    shown = display_names(list(assignment.tasks))
    policy_of = {r.task: r.policy for r in requests}
    lines = []
    for key, task in assignment.tasks.items():
        header = f"{shown[key]} ({policy_of.get(key, '')})"
        if task.waiting_reason:
            lines.append(f"{header}: {'refused' if task.rejected else 'waits'}: {task.waiting_reason}")
            continue
        slowest = max((s.estimated_seconds or 0.0 for s in task.devices), default=0.0)
        lines.append(f"{header}: {len(task.devices)} devices, slowest {slowest:.3g} s; cost {task.cost:.3g} "
                     f"(time {task.round_seconds / task.time_scale:.3g} + weight {task.fairness_weight:g} x "
                     f"unfairness {task.unfairness:.3g}), Jain after {task.jain:.3f}, {task.solver}"
                     f"{'' if task.optimal else ' (not proved optimal)'}")
        width = max([len("DEVICE")] + [len(s.device) for s in task.devices])
        node_width = max([len("NODE")] + [len(s.node) for s in task.devices])
        lines.append(f"  {'DEVICE':<{width}}  {'NODE':<{node_width}}  EST. SECONDS")
        for slot in task.devices:
            seconds = "-" if slot.estimated_seconds is None else f"{slot.estimated_seconds:.3g}"
            lines.append(f"  {slot.device:<{width}}  {slot.node:<{node_width}}  {seconds}")
    excluded = dict(assignment.excluded)
    if excluded:
        width = max(len("NODE"), *(len(node) for node in excluded))
        lines += ["", f"{len(excluded)} nodes not assigned:", f"  {'NODE':<{width}}  REASON"]
        lines += [f"  {node:<{width}}  {reason}" for node, reason in excluded.items()]
    lines += ["", f"learning period {assignment.period}: period time (slowest task's slowest device) "
                  f"{assignment.period_seconds:.3g} s, cost {assignment.cost:.3g}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedtask schedule", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=USAGE_EXAMPLE,
        description="Show which devices each FederatedTask would get in the next learning period, with estimated "
                    "times, and why every other node is left out. Reads dumps; talks to no cluster.")
    parser.add_argument("--nodes", required=True, metavar="NODES.json", help="`kubectl get nodes -o json` (or yaml)")
    parser.add_argument("--pods", metavar="PODS.json", help="`kubectl get pods -A -o json` (or yaml)")
    parser.add_argument("tasks", nargs="+", metavar="TASK.yaml", help="FederatedTask manifests")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--policy", choices=POLICIES, help="override every task's spec.scheduling.policy")
    parser.add_argument("--fairness-weight", type=float, default=DEFAULT_FAIRNESS_WEIGHT, metavar="W",
                        help="time-fair's weight for tasks without spec.scheduling.fairnessWeight (the operator's "
                             f"--fairness-weight; default {DEFAULT_FAIRNESS_WEIGHT:g})")
    args = parser.parse_args(argv)
    try:
        nodes = load_objects(args.nodes, "Node")
        pods = load_objects(args.pods, "Pod") if args.pods else []
        requests, statuses = load_tasks(args.tasks, time.time(), args.policy)
        if not (args.fairness_weight >= 0):
            raise ValueError(f"--fairness-weight must be >= 0, got {args.fairness_weight}")
        fleet = build_fleet(nodes, pods)
        assignment = select_devices(with_default_weight(requests, args.fairness_weight), fleet, now=time.time(),
                                    period_number=next_period_number(statuses))
        output = json.dumps(render_json(assignment)) if args.json else render_table(assignment, requests)
    except DocumentError as error:
        print(f"fedtask schedule: {error}", file=sys.stderr)
        return 2
    except FleetError as error:
        print(f"fedtask schedule: {args.nodes if not args.pods else args.nodes + ' / ' + args.pods}: {error}",
              file=sys.stderr)
        return 2
    except (SelectorError, ValueError) as error:
        print(f"fedtask schedule: {error}", file=sys.stderr)
        return 2
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
