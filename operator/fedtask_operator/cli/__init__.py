"""The `fedtask` command: one entry point, one module per subcommand (imported lazily, so `fedtask schedule`
never pays for torch and `fedtask run` never pays for kopf)."""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    # name: (module, function, one-line help)
    "run": ("fedtask_operator.local.cli", "main", "run FederatedTasks on this machine (pods as processes)"),
    "operator": ("fedtask_operator.kube.cli", "main", "run the Kubernetes operator (kopf)"),
    "schedule": ("fedtask_operator.cli.schedule", "main", "dry-run device selection against kubectl dumps"),
    "get": ("fedtask_operator.local.inspect", "get_main", "list the tasks of a `fedtask run` workdir (kubectl get ft)"),
    "describe": ("fedtask_operator.local.inspect", "describe_main",
                 "show one task of a `fedtask run` workdir (kubectl describe ft)"),
    "validate": ("fedtask_operator.cli.validate", "main", "check FederatedTask manifests as a cluster would"),
    "node-agent": ("fedtask_operator.agent.cli", "main", "serve a Node of a real API server, pods as processes"),
}


def usage() -> str:
    lines = ["usage: fedtask COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `fedtask COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from fedtask_operator import __version__

        print(f"fedtask {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"fedtask: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)

