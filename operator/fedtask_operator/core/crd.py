"""The FederatedTask CustomResourceDefinition, generated from the typed model in spec.py (pure).

`crds/federatedtask.yaml` is this module's output (`python -m fedtask_operator.core.crd > crds/federatedtask.yaml`);
a test keeps the committed file identical, so the dataclasses, the Python validation and the CRD cannot drift.
Also here: what a Kubernetes API server does with the schema (structural defaulting, pruning of unknown fields),
for the local runtime and for tests that check every status field the code writes is in the schema.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedtask_operator.core import spec as api
from fedtask_operator.core.kube_types import KubeObject
from fedtask_operator.core.schema import (
    CrossFieldRule,
    DateTime,
    FieldInfo,
    FreeForm,
    IntOrString,
    camel_case,
    encode,
    field_info,
    format_number,
    is_dataclass_type,
    json_name,
    pattern_hint,
    unwrap_optional,
)

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
REPO_CRD_PATH = Path(__file__).resolve().parents[3] / "crds" / "federatedtask.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Round", "type": "integer", "jsonPath": ".status.round"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _scalar_schema(tp: Any, info: FieldInfo) -> dict[str, Any]:
    schema: dict[str, Any]
    if tp is IntOrString:
        schema = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
    elif tp is bool:
        schema = {"type": "boolean"}
    elif tp is int:
        schema = {"type": "integer"}
    elif tp is float:
        schema = {"type": "number"}
    elif tp is DateTime:
        schema = {"type": "string", "format": "date-time"}
    elif tp is str:
        schema = {"type": "string"}
    else:  # pragma: no cover - a model definition error
        raise TypeError(f"no schema for {tp!r}")
    if info.enum is not None:
        schema["enum"] = list(info.enum)
    if info.minimum is not None and tp in (int, float, IntOrString):  # an int-or-string: its integer form
        schema["minimum"] = info.minimum
        if info.exclusive_minimum:
            schema["exclusiveMinimum"] = True
    if info.maximum is not None and tp in (int, float, IntOrString):
        schema["maximum"] = info.maximum
        if info.exclusive_maximum:
            schema["exclusiveMaximum"] = True
    if info.pattern is not None and tp in (str, IntOrString):
        schema["pattern"] = info.pattern
    if info.max_length is not None and tp is str:
        schema["maxLength"] = info.max_length
    elif info.enum is not None and tp is str:
        schema["maxLength"] = max(len(e) for e in info.enum)  # bounds the CEL cost estimate of rules over it
    return schema


def _type_schema(tp: Any, info: FieldInfo, defaults: bool) -> dict[str, Any]:
    tp, _ = unwrap_optional(tp)
    if is_dataclass_type(tp):
        return dataclass_schema(tp, defaults)
    if tp in (dict, FreeForm):
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item_info = FieldInfo(pattern=info.pattern)
        schema: dict[str, Any] = {"type": "array", "items": _type_schema(item_tp, item_info, defaults)}
        if info.max_items is not None:
            schema["maxItems"] = info.max_items
        return schema
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        value_info = FieldInfo(pattern=info.pattern, max_length=info.max_length, minimum=info.minimum,
                               maximum=info.maximum)
        schema = {"type": "object", "additionalProperties": _type_schema(value_tp, value_info, defaults)}
        if info.max_items is not None:
            schema["maxProperties"] = info.max_items
        return schema
    return _scalar_schema(tp, info)


def _field_default(f: dataclasses.Field[Any], tp: Any) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            # `{}` lets the API server fill in the nested defaults; a non-standard default is written out.
            return {} if value == type(value)() else encode(value)
        return encode(value)
    return None


def _checked_default(default: Any, schema: dict[str, Any]) -> Any:
    """An API server checks an object's default against the object's CEL rules as written, before it fills in the
    nested defaults: `{}` fails every rule that reads a field ("no such key"). Such objects get their default
    written out in full (the same object the API server would build from `{}`)."""
    rules = [item["rule"] for item in schema.get("x-kubernetes-validations", []) if "oldSelf" not in item["rule"]]
    if default == {} and rules:
        return apply_defaults({}, schema)
    return default


def _validations(rules: list[CrossFieldRule]) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        item = {"rule": rule.cel, "message": rule.message}
        if rule.message_expression:
            item["messageExpression"] = rule.message_expression
        if rule.field_path:
            item["fieldPath"] = rule.field_path
        item["reason"] = "FieldValueForbidden" if rule.transition else "FieldValueInvalid"
        out.append(item)
    return out


def dataclass_schema(cls: type, defaults: bool = True, at: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The structural schema of a model dataclass; `defaults=False` for status (nothing is defaulted there)."""
    hints = typing.get_type_hints(cls)
    properties = {}
    required = []
    for f in dataclasses.fields(cls):
        info = field_info(f)
        sub_at = at + (f.name,) if at is not None else None
        tp, _ = unwrap_optional(hints[f.name])
        if is_dataclass_type(tp):
            schema = dataclass_schema(tp, defaults, sub_at)
        else:
            schema = _type_schema(hints[f.name], info, defaults)
        if info.immutable and defaults:
            schema.setdefault("x-kubernetes-validations", []).insert(0, {
                "rule": "self == oldSelf", "message": api.IMMUTABLE_MESSAGE, "reason": "FieldValueForbidden"})
        if info.doc:
            schema = {"description": info.doc, **schema}
        if defaults and not info.required:
            default = _field_default(f, tp)
            if default is not None:
                schema["default"] = _checked_default(default, schema)
        if info.required:
            required.append(json_name(f))
        properties[json_name(f)] = schema
    schema = {"type": "object", "properties": properties}
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema = {"description": cls.__doc__.strip().splitlines()[0], **schema}
    if required:
        schema["required"] = required
    rules = list(api.TYPE_RULES.get(cls, []))
    if at is not None:
        rules += [rule for rule in api.CROSS_FIELD_RULES if rule.at == at]
    if rules:
        schema["x-kubernetes-validations"] = _validations(rules)
    return schema


def build_openapi_schema() -> dict[str, Any]:
    spec_schema = dataclass_schema(api.TaskSpec, defaults=True, at=())
    spec_schema = {"description": "What to learn, from which devices, and how.", **spec_schema}
    spec_schema["default"] = _checked_default({}, spec_schema)
    status_schema = dataclass_schema(api.TaskStatus, defaults=False)
    status_schema = {"description": "What the operator observed and decided; written by the operator only.",
                     **status_schema}
    return {
        "type": "object",
        "description": "A federated learning job: rounds of training on devices, aggregation and server-side "
                       "adjustment on a globally shared dataset.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }


def build_crd() -> KubeObject:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": api.GROUP,
            "names": {"kind": api.KIND, "listKind": f"{api.KIND}List", "plural": api.PLURAL,
                      "singular": api.SINGULAR, "shortNames": list(api.SHORT_NAMES), "categories": ["fedtask"]},
            "scope": "Namespaced",
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": build_openapi_schema()},
            }],
        },
    }


HEADER = ("# Generated from operator/fedtask_operator/core/spec.py by `python -m fedtask_operator.core.crd`: "
          "do not edit.\n")


def render_crd() -> str:
    import yaml

    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120, allow_unicode=True)


def openapi_schema(crd: KubeObject | None = None) -> dict[str, Any]:
    crd = crd or build_crd()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = openapi_schema()["properties"]["status"]
    return schema


# --------------------------------------------------------------------------------------------------------------------
# What an API server does with the schema


def unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Paths under `value` that an API server would prune (not in the structural schema)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(additional, dict):
                found += unknown_fields(item, additional, f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and schema.get("type") == "array":
        for index, item in enumerate(value):
            found += unknown_fields(item, schema.get("items", {}), f"{path}[{index}]")
    return found


def unknown_status_fields(status: Mapping[str, Any]) -> list[str]:
    """Paths in `status` a real API server would drop: every field the code writes must be in the CRD's schema."""
    return unknown_fields(status, status_schema(), "status")


def prune_unknown_fields(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of `value` without the fields a structural schema does not know (what the API server stores)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return copy.deepcopy(value)
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            if properties is not None and key in properties:
                out[key] = prune_unknown_fields(item, properties[key])
            elif isinstance(additional, dict):
                out[key] = prune_unknown_fields(item, additional)
        return out
    if isinstance(value, list) and schema.get("type") == "array":
        return [prune_unknown_fields(item, schema.get("items", {})) for item in value]
    return copy.deepcopy(value)


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of `value` with the schema's defaults applied, as an API server does (null counts as absent)."""
    preserves_unknown = "x-kubernetes-preserve-unknown-fields" in schema
    if isinstance(value, dict) and schema.get("type") == "object" and not preserves_unknown:
        out = {k: v for k, v in value.items() if v is not None}  # null fields are dropped before defaulting
        for key, prop in (schema.get("properties") or {}).items():
            if key not in out and "default" in prop:
                out[key] = copy.deepcopy(prop["default"])
        for key, item in list(out.items()):
            prop = (schema.get("properties") or {}).get(key)
            if prop is None and isinstance(schema.get("additionalProperties"), dict):
                prop = schema["additionalProperties"]
            if prop is not None:
                out[key] = apply_defaults(item, prop)
        return out
    if isinstance(value, list) and schema.get("type") == "array":
        return [apply_defaults(item, schema.get("items", {})) for item in value]
    return copy.deepcopy(value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--reference"]:  # rewrite the generated sections of docs/api.md in place
        path = Path(argv[1]) if len(argv) > 1 else REPO_CRD_PATH.parents[1] / "docs" / "api.md"
        path.write_text(update_reference(path.read_text()))
        return 0
    text = render_crd()
    if argv[:1] == ["--check"]:
        path = Path(argv[1]) if len(argv) > 1 else REPO_CRD_PATH
        if path.read_text() != text:
            print(f"{path} is out of date: run `python -m fedtask_operator.core.crd > {path}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0



# --------------------------------------------------------------------------------------------------------------------
# The field reference in docs/api.md (generated, so it lists every field with its real default and bounds)

REFERENCE_BEGIN = "<!-- BEGIN GENERATED: python -m fedtask_operator.core.crd --reference {part} -->"
REFERENCE_END = "<!-- END GENERATED {part} -->"


def _type_label(tp: Any) -> str:
    tp, _ = unwrap_optional(tp)
    if dataclasses.is_dataclass(tp):
        return "object"
    if tp in (dict, FreeForm):
        return "object (free-form)"
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        return f"list of {_type_label(item_tp)}"
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        return f"map of {_type_label(value_tp)}"
    return {int: "integer", float: "number", str: "string", bool: "boolean", DateTime: "timestamp",
            IntOrString: "quantity (int or string)"}[tp]


def _constraints(info: FieldInfo) -> str:
    parts = []
    if info.enum is not None:
        parts.append(" \\| ".join(f"`{e}`" if e != "" else '`""`' for e in info.enum))
    if info.minimum is not None:
        parts.append(f"{'>' if info.exclusive_minimum else '>='} {format_number(info.minimum)}")
    if info.maximum is not None:
        parts.append(f"{'<' if info.exclusive_maximum else '<='} {format_number(info.maximum)}")
    if info.pattern is not None:
        parts.append(pattern_hint(info.pattern, api.PATTERN_HINTS).strip(" ()"))
    if info.max_items is not None:
        parts.append(f"at most {info.max_items} items")
    if info.required:
        parts.append("required")
    return "; ".join(parts)


def _default_label(f: dataclasses.Field[Any], tp: Any) -> str:
    import json

    default = None if field_info(f).required else _field_default(f, tp)
    if default is None or default == {} and dataclasses.is_dataclass(unwrap_optional(tp)[0]):
        return ""
    return f"`{json.dumps(default, separators=(', ', ': '))}`"


def reference_rows(cls: type, prefix: str, with_defaults: bool) -> list[list[str]]:
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        info = field_info(f)
        path = f"{prefix}.{json_name(f)}"
        row = [f"`{path}`", _type_label(tp)]
        if with_defaults:
            row += [_default_label(f, tp), _constraints(info)]
        row.append(info.doc.replace("|", "\\|"))
        rows.append(row)
        inner, _ = unwrap_optional(tp)
        if is_dataclass_type(inner):
            rows += reference_rows(inner, path, with_defaults)
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            rows += reference_rows(typing.get_args(inner)[0], path + "[]", with_defaults)
    return rows


def _immutable_paths(cls: type, prefix: str) -> list[str]:
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{json_name(f)}"
        inner, _ = unwrap_optional(hints[f.name])
        if field_info(f).immutable:
            found.append(path)
        elif is_dataclass_type(inner):
            found += _immutable_paths(inner, path)
    return found


def _rule_rows() -> list[list[str]]:
    rows = [[f"`{path}`", api.IMMUTABLE_MESSAGE, "`self == oldSelf`"]
            for path in _immutable_paths(api.TaskSpec, "spec")]
    for rule in api.CROSS_FIELD_RULES:
        base = "spec" + "".join("." + camel_case(a) for a in rule.at)
        rows.append([f"`{base}{rule.field_path}`", rule.message, f"`{rule.cel}`"])
    for cls, rules in api.TYPE_RULES.items():
        for where in _paths_of(api.TaskSpec, cls, "spec"):
            for rule in rules:
                rows.append([f"`{where}{rule.field_path}`", rule.message, f"`{rule.cel}`"])
    return rows


def _paths_of(cls: type, target: type, prefix: str) -> list[str]:
    """Where objects of dataclass `target` occur inside `cls` (list items as `[]`)."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner, _ = unwrap_optional(hints[f.name])
        path = f"{prefix}.{json_name(f)}"
        if typing.get_origin(inner) is list:
            inner, path = typing.get_args(inner)[0], path + "[]"
        if inner is target:
            found.append(path)
        elif is_dataclass_type(inner):
            found += _paths_of(inner, target, path)
    return found


def render_reference(part: str) -> str:
    if part == "spec":
        header = ["Field", "Type", "Default", "Constraints", "Meaning"]
        rows = reference_rows(api.TaskSpec, "spec", True)
    elif part == "status":
        header = ["Field", "Type", "Meaning"]
        rows = reference_rows(api.TaskStatus, "status", False)
    elif part == "rules":
        header = ["Field", "Error", "CEL rule"]
        rows = _rule_rows()
    else:
        raise ValueError(f"unknown reference part {part!r}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("\n", " ").replace("||", "\\|\\|") for cell in row) + " |"
              for row in rows]
    return "\n".join([REFERENCE_BEGIN.format(part=part), *lines, REFERENCE_END.format(part=part)])


def update_reference(text: str) -> str:
    """`text` (docs/api.md) with every generated section replaced by the current one."""
    for part in ("spec", "rules", "status"):
        begin, end = REFERENCE_BEGIN.format(part=part), REFERENCE_END.format(part=part)
        head, found, rest = text.partition(begin)
        if not found:
            raise ValueError(f"docs/api.md has no {begin}")
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"docs/api.md has no {end}")
        text = head + render_reference(part) + tail
    return text


if __name__ == "__main__":
    sys.exit(main())
