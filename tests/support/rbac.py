"""The operator's RBAC rules (deploy/rbac/rules.yaml, the single source of the generated manifests) and the API calls
the operator made against the emulated API server, in the same (group, resource, verb) terms."""
from __future__ import annotations

import pathlib

from tests.support.kube import TEST_USER_AGENT

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "rbac" / "rules.yaml"
VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch",
         "DELETE": "delete"}  # the emulator's request actions -> RBAC verbs


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every permission a list of RBAC rules grants."""
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def recorded_calls(cluster) -> set[tuple[str, str, str, bool]]:
    """(group, resource[/subresource], verb, cluster-wide?) of every resource call the operator made."""
    calls = set()
    for request in cluster.requests():
        resource = request["resource"]
        if TEST_USER_AGENT in request["user_agent"] or resource is None or not resource.plural:
            continue  # the tests' own calls; API discovery (allowed to every authenticated user)
        name = resource.plural + (f"/{request['subresource']}" if request["subresource"] else "")
        calls.add((resource.group, name, VERBS[request["action"]], request["namespace"] is None))
    return calls
