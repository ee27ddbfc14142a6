#!/usr/bin/env python3
"""Generate the deployable RBAC manifests deploy/rbac/{cluster-wide,namespaced}.yaml from deploy/rbac/rules.yaml.

rules.yaml is the single source (tests/api/test_rbac.py checks it against every call the operator makes): its
"cluster" rules are bound cluster-wide in both variants, its "tasks" rules by a ClusterRole (cluster-wide variant) or
by a Role in the watched namespace (namespaced variant). Run it after changing rules.yaml:
    python3 hack/generate-rbac.py            (--check: exit 1 if a manifest is stale, change nothing)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RBAC = ROOT / "deploy" / "rbac"
RULES = RBAC / "rules.yaml"
SERVICE_ACCOUNT = {"name": "fedtask-operator", "namespace": "fedtask-system"}
NAMESPACE = "default"  # the namespace the namespaced variant's Role and RoleBinding are written for
HEADER = ("# Generated from rules.yaml by hack/generate-rbac.py: change rules.yaml, then run the script.\n"
          "# Operator service account: {namespace}/{name}.\n")
VARIANTS = {  # file name: (namespaced, what the variant is for)
    "cluster-wide.yaml": (False, "# Variant: the operator watches every namespace "
                                 "(`fedtask operator --all-namespaces`).\n"),
    "namespaced.yaml": (True, "# Variant: the operator watches some namespaces "
                              "(`fedtask operator --namespace default`); repeat the Role and\n"
                              "# RoleBinding per watched namespace. Nodes and pods are still read cluster-wide "
                              "(resource accounting).\n"),
}


def _role(kind: str, name: str, rules: list[dict], namespace: str | None = None) -> dict:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "rules": rules}


def _binding(kind: str, role_kind: str, name: str, namespace: str | None = None) -> dict:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", **SERVICE_ACCOUNT}]}


def render(namespaced: bool, rules: dict) -> list[dict]:
    """The manifest's documents: the service account, the cluster rules and the task rules, each with its binding."""
    documents = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(SERVICE_ACCOUNT)},
                 _role("ClusterRole", "fedtask-operator-cluster", rules["cluster"]),
                 _binding("ClusterRoleBinding", "ClusterRole", "fedtask-operator-cluster")]
    if namespaced:
        documents += [_role("Role", "fedtask-operator-tasks", rules["tasks"], NAMESPACE),
                      _binding("RoleBinding", "Role", "fedtask-operator-tasks", NAMESPACE)]
    else:
        documents += [_role("ClusterRole", "fedtask-operator-tasks", rules["tasks"]),
                      _binding("ClusterRoleBinding", "ClusterRole", "fedtask-operator-tasks")]
    return documents


def generated_files() -> dict[Path, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {RBAC / name: HEADER.format(**SERVICE_ACCOUNT) + comment
            + yaml.safe_dump_all(render(namespaced, rules), sort_keys=False)
            for name, (namespaced, comment) in VARIANTS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale manifests; exit 1 if there are any")
    args = parser.parse_args(argv)
    stale = [path for path, text in generated_files().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: stale, run hack/generate-rbac.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated_files().items():
        if path in stale:
            path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
