"""Issue 12: every integer a task author writes is bounded in the CRD itself, so the API server refuses an absurd
value before any code of ours reads it. The test walks the committed CRD's spec schema: every integer has a minimum
and a maximum, and every quantity (int-or-string) has a bounded pattern for its string form and a minimum of 0 and a
maximum for its integer form. The status is written by the operator alone and is not walked: a bound there could only
refuse the operator's own status patch."""
from __future__ import annotations

import re

import pytest

from fedtask_operator.core.spec import MAX_QUANTITY_INTEGER, parse_task
from tests.support.crd import SPEC_SCHEMA

UNBOUNDED_REPEAT = re.compile(r"(?<!\\)[*+](?![^\[]*\])|\{\d+,\}")  # `*`, `+` or `{n,}` outside a character class


def schema_nodes(schema: dict, path: str = "spec"):
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from schema_nodes(schema["additionalProperties"], f"{path}.*")


def unbounded(schema: dict) -> list[str]:
    problems = []
    for path, node in schema_nodes(schema):
        if node.get("x-kubernetes-int-or-string"):
            pattern = node.get("pattern")
            if not pattern or UNBOUNDED_REPEAT.search(pattern.replace(r"\+", "")) or not pattern.endswith("$"):
                problems.append(f"{path}: quantity without a bounded, anchored pattern ({pattern})")
            if node.get("minimum") != 0 or node.get("maximum") is None:
                problems.append(f"{path}: quantity whose integer form has no minimum 0 and maximum")
        elif node.get("type") == "integer" and (node.get("minimum") is None or node.get("maximum") is None):
            problems.append(f"{path}: integer with minimum {node.get('minimum')} and maximum {node.get('maximum')}")
    return problems


def test_every_integer_and_quantity_of_the_spec_is_bounded():
    nodes = dict(schema_nodes(SPEC_SCHEMA))
    assert sum(node.get("type") == "integer" for node in nodes.values()) >= 20  # the walk reaches them all
    assert sum(bool(node.get("x-kubernetes-int-or-string")) for node in nodes.values()) == 6
    assert unbounded(SPEC_SCHEMA) == []


def test_the_walk_finds_an_unbounded_integer_and_an_unbounded_pattern():
    schema = {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 0},
        "b": {"type": "array", "items": {"type": "object", "properties": {"c": {"type": "integer"}}}},
        "q": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True, "pattern": "^[0-9]+$",
                                                          "minimum": 0, "maximum": 5}},
        "ok": {"type": "integer", "minimum": 0, "maximum": 1}}}
    assert unbounded(schema) == ["spec.a: integer with minimum 0 and maximum None",
                                 "spec.b[].c: integer with minimum None and maximum None",
                                 "spec.q.*: quantity without a bounded, anchored pattern (^[0-9]+$)"]


@pytest.mark.parametrize("field, message", [
    ({"model": {"seed": 2 ** 31}}, "spec.model.seed: must be <= 2147483647"),
    ({"rounds": {"timeoutSeconds": 604801}}, "spec.rounds.timeoutSeconds: must be <= 604800"),
    ({"devices": {"resources": {"requests": {"cpu": -1}}}}, "spec.devices.resources.requests.cpu: must be >= 0"),
    ({"devices": {"resources": {"limits": {"memory": MAX_QUANTITY_INTEGER + 1}}}},
     "spec.devices.resources.limits.memory: must be <= 1000000000000000000"),
])
def test_the_local_runtime_refuses_the_same_values_naming_the_field(field, message):
    with pytest.raises(Exception) as raised:
        parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                    "metadata": {"name": "x", "namespace": "d"}, "spec": field})
    assert message in str(raised.value)
