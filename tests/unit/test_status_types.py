"""The status TypedDicts (core/status_types.py) and the CRD's status schema agree: the same keys at every level, the
same required keys, and value types that match the schema's types. The schema is generated from spec.py's
dataclasses, so a field added to, renamed in or removed from `TaskStatus` (or a record inside it) fails here until the
TypedDict follows."""
from __future__ import annotations

import typing
from typing import Any, get_args, get_origin, is_typeddict

import pytest

from fedtask_operator.core import crd, status_types
from fedtask_operator.core.status_types import TaskStatusDict

SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def mismatches(tp: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Where the Python type `tp` and the structural schema disagree, one line per problem (empty: they agree)."""
    if is_typeddict(tp):
        if schema.get("type") != "object" or "properties" not in schema:
            return [f"{path}: {tp.__name__} is a TypedDict, the schema is not an object with properties"]
        hints = typing.get_type_hints(tp)
        properties = schema["properties"]
        found = [f"{path}.{key}: in {tp.__name__}, not in the schema" for key in sorted(set(hints) - set(properties))]
        found += [f"{path}.{key}: in the schema, not in {tp.__name__}" for key in sorted(set(properties) - set(hints))]
        if set(tp.__required_keys__) != set(schema.get("required", ())):
            found.append(f"{path}: {tp.__name__} requires {sorted(tp.__required_keys__)}, "
                         f"the schema {sorted(schema.get('required', ()))}")
        for key in sorted(set(hints) & set(properties)):
            found += mismatches(hints[key], properties[key], f"{path}.{key}")
        return found
    origin = get_origin(tp)
    if origin is list:
        if schema.get("type") != "array":
            return [f"{path}: a list, the schema says {schema.get('type')}"]
        return mismatches(get_args(tp)[0], schema["items"], f"{path}[]")
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if key_tp is not str or schema.get("type") != "object" or "properties" in schema:
            return [f"{path}: a dict[str, ...], the schema is not a map"]
        if value_tp is Any:
            return [] if schema.get("x-kubernetes-preserve-unknown-fields") else [
                f"{path}: free-form (dict[str, Any]), the schema does not preserve unknown fields"]
        if "additionalProperties" not in schema:
            return [f"{path}: a map of {value_tp}, the schema has no additionalProperties"]
        return mismatches(value_tp, schema["additionalProperties"], f"{path}.*")
    if tp in SCALARS:
        return [] if schema.get("type") == SCALARS[tp] else [
            f"{path}: {tp.__name__}, the schema says {schema.get('type')}"]
    return [f"{path}: no rule for the type {tp!r}"]  # pragma: no cover - a new kind of field: teach this test


def typed_dicts(tp: Any) -> set[Any]:
    """Every TypedDict reachable from `tp` (itself included)."""
    if is_typeddict(tp):
        found = {tp}
        for hint in typing.get_type_hints(tp).values():
            found |= typed_dicts(hint)
        return found
    return set().union(*(typed_dicts(arg) for arg in get_args(tp)))


def test_status_typed_dicts_match_the_crd_status_schema():
    assert mismatches(TaskStatusDict, crd.status_schema(), "status") == []


def test_every_status_typed_dict_is_reached_from_task_status_dict():
    """A TypedDict of the module that TaskStatusDict does not contain would escape the schema check above."""
    defined = {value for value in vars(status_types).values() if is_typeddict(value)}
    assert defined == typed_dicts(TaskStatusDict)


@pytest.mark.parametrize("drift, expected", [
    ("extra", "status.conditions[].extra: in Drifted, not in the schema"),
    ("missing", "status.conditions[].lastTransitionTime: in the schema, not in Drifted"),
    ("type", "status.conditions[].observedGeneration: str, the schema says integer"),
    ("required", "status.conditions[]: Drifted requires ['status'], the schema ['status', 'type']"),
])
def test_the_check_catches_drift(drift, expected):
    """The checker itself: each kind of drift in a record (here the condition) is reported at its path."""
    fields: dict[str, Any] = dict(typing.get_type_hints(status_types.ConditionDict))
    required = {"type", "status"}
    if drift == "extra":
        fields["extra"] = str
    elif drift == "missing":
        del fields["lastTransitionTime"]
    elif drift == "type":
        fields["observedGeneration"] = str
    elif drift == "required":
        required = {"status"}
    drifted = typing.TypedDict("Drifted", {key: typing.Required[value] if key in required else value
                                           for key, value in fields.items()}, total=False)
    conditions_schema = crd.status_schema()["properties"]["conditions"]
    assert mismatches(list[drifted], conditions_schema, "status.conditions") == [expected]
