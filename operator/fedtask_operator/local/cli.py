"""`fedtask run MANIFEST... [--nodes NODES] [--workdir DIR]`: run FederatedTasks on this machine.

Pods run as local processes (worker pods fork from a preloaded server), the object store is `DIR/store`, and
`DIR/<task>/federatedtask.json` holds each task with its status as the operator would show it. Running the same
command again resumes where the last run stopped (Ctrl-C, or even kill -9).
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from fedtask_operator.core.confinement import DEFAULT_HOST_PATH_PREFIXES, Confinement
from fedtask_operator.core.documents import DocumentError, load_documents
from fedtask_operator.core.scheduling.collection import DEFAULT_COLLECTION_WINDOW_SECONDS, SchedulingConfig
from fedtask_operator.core.scheduling.objective import DEFAULT_FAIRNESS_WEIGHT
from fedtask_operator.core.spec import SpecError, parse_task, spec_to_dict
from fedtask_operator.local.nodes import builtin_nodes, load_nodes

DEFAULT_WORKDIR = "./fedtask-runs"
PRELOADABLE_DATASETS = {"mnist", "digits"}  # the worker's builtin datasets worth loading once in the fork server
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class ManifestError(DocumentError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtask run",
        description="Run FederatedTasks on this machine: pods as local processes, a folder as the object store. "
                    "Several manifests share one fleet. Run the same command again to resume.")
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="FederatedTask YAML/JSON files")
    parser.add_argument("--nodes", metavar="NODES",
                        help="nodes in `kubectl get nodes -o yaml|json` form (default: a built-in fleet of "
                             "3 CPU nodes)")
    parser.add_argument("--workdir", metavar="DIR", default=DEFAULT_WORKDIR,
                        help=f"where tasks, pods, logs and the object store live (default {DEFAULT_WORKDIR})")
    parser.add_argument("--secrets", metavar="FILE",
                        help="Secret/ConfigMap objects (YAML) that pods' secretKeyRef/configMapKeyRef resolve from")
    parser.add_argument("--no-fork-server", action="store_true",
                        help="start every worker pod as a fresh process (slower; for debugging)")
    parser.add_argument("--set", metavar="PATH=VALUE", action="append", default=[], dest="overrides",
                        help="override a field of every manifest before validation, e.g. --set spec.rounds.max=5 "
                             "(VALUE is read as YAML: 5 is a number, true a boolean; repeatable)")
    parser.add_argument("-o", "--output", choices=["json"],
                        help="print the final tasks (with status) as a JSON List on stdout; progress goes to stderr")
    parser.add_argument("--collection-window", type=float, default=DEFAULT_COLLECTION_WINDOW_SECONDS, metavar="S",
                        help="seconds a learning period waits for more tasks to need devices before it assigns them "
                             f"jointly (default {DEFAULT_COLLECTION_WINDOW_SECONDS:g})")
    parser.add_argument("--allowed-host-path-prefix", action="append", dest="host_path_prefixes", metavar="PATH",
                        help="a directory under which spec.data.hostPath and spec.publish.hostPath must lie, as the "
                             "operator's flag of that name (repeat; default /var/lib/fedtask)")
    parser.add_argument("--allowed-runtime-class", action="append", dest="runtime_classes", metavar="NAME",
                        help="a spec.podTemplate.runtimeClassName tasks may use, as the operator's flag of that name "
                             "(repeat; default none)")
    parser.add_argument("--allowed-scheduler-name", action="append", dest="scheduler_names", metavar="NAME",
                        help="a spec.podTemplate.schedulerName tasks may use, as the operator's flag of that name "
                             "(repeat; default-scheduler is always allowed)")
    parser.add_argument("--fairness-weight", type=float, default=DEFAULT_FAIRNESS_WEIGHT, metavar="W",
                        help="time-fair's weight of unfairness for tasks that set no spec.scheduling.fairnessWeight "
                             f"(default {DEFAULT_FAIRNESS_WEIGHT:g}; 0: the fastest devices)")
    return parser


def local_confinement(args: argparse.Namespace) -> Confinement:
    """The operator's confinement as `fedtask run`'s flags set it (ConfinementSettingError names a bad flag)."""
    return Confinement(
        allowed_host_path_prefixes=tuple(args.host_path_prefixes or DEFAULT_HOST_PATH_PREFIXES),
        allowed_runtime_classes=tuple(args.runtime_classes or ()),
        allowed_scheduler_names=tuple(args.scheduler_names or ()))


def parse_override(text: str) -> tuple[list[str], object]:
    """`spec.rounds.max=5` -> (["spec", "rounds", "max"], 5); ManifestError for anything else."""
    import yaml

    path, separator, raw = text.partition("=")
    keys = path.strip().split(".")
    if not separator or not path.strip() or any(not key for key in keys):
        raise ManifestError(f"--set {text!r}: expected PATH=VALUE with a dotted PATH, e.g. spec.rounds.max=5")
    if keys[0] not in ("metadata", "spec"):
        raise ManifestError(f"--set {text!r}: PATH must start with spec. or metadata.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ManifestError(f"--set {text!r}: VALUE is not valid YAML: {str(error).splitlines()[0]}") from error
    return keys, value


def apply_override(document: dict, keys: list[str], value: object) -> dict:
    """A copy of `document` with the field at `keys` set to `value` (intermediate mappings are created)."""
    import copy

    result = copy.deepcopy(document)
    target = result
    for depth, key in enumerate(keys[:-1]):
        child = target.get(key)
        if child is None:
            child = target[key] = {}
        elif not isinstance(child, dict):
            raise ManifestError(f"--set {'.'.join(keys)}: {'.'.join(keys[:depth + 1])} is not a mapping")
        target = child
    target[keys[-1]] = value
    return result


def load_manifests(paths: list[str], overrides: list[str] = ()) -> list[dict]:
    """Every FederatedTask in the files, with the --set overrides applied, validated as a cluster would;
    ManifestError names file and field."""
    parsed_overrides = [parse_override(text) for text in overrides]
    manifests: list[dict] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            documents = load_documents(path)
        except DocumentError as err:
            errors.append(str(err))
            continue
        if not documents:
            errors.append(f"{path}: no FederatedTask in the file")
        for number, document in enumerate(documents):
            where = f"{path} (document {number + 1})" if len(documents) > 1 else path
            try:
                for keys, value in parsed_overrides:
                    if isinstance(document, dict):
                        document = apply_override(document, keys, value)
                task = parse_task(document)
            except SpecError as err:
                errors.extend(f"{where}: {error}" for error in err.errors)
                continue
            if task.name in seen:
                errors.append(f"{where}: metadata.name: {task.name!r} is already defined in {seen[task.name]}")
                continue
            seen[task.name] = where
            manifests.append({"manifest": document, "spec": spec_to_dict(task.spec), "name": task.name})
    if errors:
        raise ManifestError("\n".join(errors))
    return manifests


def load_secrets(path: str) -> tuple[dict, dict]:
    secrets: dict[str, dict] = {}
    config_maps: dict[str, dict] = {}
    documents = load_documents(path)
    import base64

    for number, document in enumerate(documents):
        items = document.get("items", [document]) if isinstance(document, dict) else [document]
        for item in items:
            if not isinstance(item, dict) or item.get("kind") not in ("Secret", "ConfigMap"):
                raise ManifestError(f"{path}: document {number + 1}: kind: must be Secret or ConfigMap")
            metadata = item.get("metadata") or {}
            name = metadata.get("name")
            if not name:
                raise ManifestError(f"{path}: document {number + 1}: metadata.name: required")
            data = {k: str(v) for k, v in (item.get("stringData") or {}).items()}
            for key, value in (item.get("data") or {}).items():
                data[key] = base64.b64decode(value).decode() if item["kind"] == "Secret" else str(value)
            target = secrets if item["kind"] == "Secret" else config_maps
            target[f"{metadata.get('namespace') or 'default'}/{name}"] = data
    return secrets, config_maps


def warm_up_spec(spec: dict) -> dict:
    """What the fork server prepares once for a task's pods (see forkserver.warm_up)."""
    return {
        "model": spec["model"]["name"], "modelArgs": spec["model"]["args"],
        "dataset": spec["data"]["dataset"], "datasetArgs": spec["data"]["args"],
        "partition": spec["data"]["partition"], "deviceCount": spec["devices"].get("count"),
        "sharedFraction": spec["data"]["shared"]["fraction"],
        "batches": [(spec["training"]["batchSize"], spec["training"]["optimizer"]),
                    (spec["adjustment"]["batchSize"], "sgd")],
        "trainStep": spec["training"]["step"], "evalFunction": spec["evaluation"]["function"],
    }


def import_matplotlib() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    except Exception:  # the plot step reports it, if it matters
        pass


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scheduling = SchedulingConfig(collection_window=args.collection_window, fairness_weight=args.fairness_weight)
    except ValueError as error:
        parser.error(f"--collection-window/--fairness-weight: {error}")
    try:
        confinement = local_confinement(args)
    except ValueError as error:  # ConfinementSettingError names the flag
        parser.error(str(error))
    try:
        manifests = load_manifests(args.manifests, args.overrides)
        nodes = load_nodes(args.nodes) if args.nodes else builtin_nodes()
        secrets, config_maps = load_secrets(args.secrets) if args.secrets else ({}, {})
    except DocumentError as err:
        print(f"fedtask run: {err}", file=sys.stderr)
        return EXIT_USAGE

    # Imported here: validating a manifest needs neither torch nor the runtime.
    from fedtask_operator.local.config import local_runtime_config, pod_environment
    from fedtask_operator.local.forkserver import ForkServer
    from fedtask_operator.local.kubelet import ProcessKubelet
    from fedtask_operator.local.progress import Progress, summary_table
    from fedtask_operator.local.runtime import LocalRuntime
    from fedtask_operator.local.store import LocalStore

    workdir = Path(args.workdir).resolve()
    store = LocalStore(workdir)
    for item in manifests:
        store.apply_task(item["manifest"], item["spec"])
    datasets = sorted({item["spec"]["data"]["dataset"] for item in manifests} & PRELOADABLE_DATASETS)
    warm = [warm_up_spec(item["spec"]) for item in manifests if item["spec"]["data"]["source"] == "builtin"]
    env = pod_environment(args.manifests)  # the user's modules next to the manifests import in every pod
    fork_server = None if args.no_fork_server else ForkServer(env=env, preload_datasets=datasets, warm=warm)
    if fork_server is not None:  # pay the imports while the first plans are made
        threading.Thread(target=fork_server.start, daemon=True).start()
    threading.Thread(target=import_matplotlib, daemon=True).start()  # for the plots at the end, while pods start
    kubelet = ProcessKubelet(workdir / "pods", secrets=secrets, config_maps=config_maps, launcher=fork_server,
                             claims_root=workdir / "claims", base_env=env)
    progress = Progress(stream=sys.stderr if args.output else None)
    runtime = LocalRuntime(store, kubelet, nodes, local_runtime_config(workdir, confinement),
                           [item["name"] for item in manifests], progress, scheduling)
    progress.message(f"fedtask run: {len(manifests)} task(s) on {len(nodes)} node(s), workdir {workdir}")
    try:
        succeeded = runtime.run()
    except KeyboardInterrupt:
        runtime.stop()
        progress.update(runtime.tasks(), force=True)
        progress.message("interrupted: pods stopped; run the same command again to resume")
        return EXIT_INTERRUPTED
    finally:
        if fork_server is not None:
            fork_server.stop()
        kubelet.close()
    progress.update(runtime.tasks(), force=True)
    stuck = runtime.stuck_reasons()
    for name, reason in stuck.items():
        progress.message(f"{name}: cannot progress on this fleet: {reason}")
    models = {name: str(store.task_dir(name) / "model.safetensors") for name in runtime.runs
              if (store.task_dir(name) / "model.safetensors").exists()}
    progress.message("\n" + summary_table(runtime.tasks(), {n: r.elapsed for n, r in runtime.runs.items()}, models))
    if args.output == "json":
        import json

        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(runtime.tasks().values())}, indent=2))
    return EXIT_OK if succeeded else EXIT_FAILED
