"""An API server's validation of a FederatedTask spec, from the committed CRD alone: structural defaulting, strict
field validation (kubectl's default), the OpenAPI schema (jsonschema) and the CEL rules (cel-python); and the Python
validation (`parse_task`) to compare it with. Used by tests/unit/test_crd.py and test_crd_quantities.py."""
from __future__ import annotations

import functools
from pathlib import Path

import celpy
import jsonschema
import yaml

from fedtask_operator.core import crd as crdmod
from fedtask_operator.core.spec import SpecError, parse_task

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "federatedtask.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = SCHEMA["properties"]["spec"]


def draft7(schema):
    """OpenAPI v3.0 (boolean exclusiveMinimum/Maximum) -> JSON Schema draft 7 (numeric)."""
    if isinstance(schema, list):
        return [draft7(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: draft7(v) for k, v in schema.items() if k not in ("default", "x-kubernetes-validations")}
    if out.pop("exclusiveMinimum", False):
        out["exclusiveMinimum"] = out.pop("minimum")
    if out.pop("exclusiveMaximum", False):
        out["exclusiveMaximum"] = out.pop("maximum")
    return out


SPEC_VALIDATOR = jsonschema.Draft7Validator(draft7(SPEC_SCHEMA))
CEL_ENV = celpy.Environment()


@functools.cache
def cel_program(rule: str):
    return CEL_ENV.program(CEL_ENV.compile(rule))


def to_cel(value, schema):
    """Kubernetes hands CEL typed values: `number` fields are doubles even when written as 1."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return celpy.celtypes.MapType({celpy.celtypes.StringType(k): to_cel(v, props.get(k, extra))
                                       for k, v in value.items()})
    if isinstance(value, list):
        return celpy.celtypes.ListType([to_cel(v, schema.get("items", {})) for v in value])
    if schema.get("type") == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return celpy.celtypes.DoubleType(float(value))
    if schema.get("type") == "integer" and isinstance(value, float) and value.is_integer():
        return celpy.celtypes.IntType(int(value))  # the API server stores 2.0 in an integer field as 2
    return celpy.json_to_cel(value)


MISSING = object()


def cel_errors(value, schema, path, old=MISSING):
    """The CEL rules' errors; transition rules (`oldSelf`) only run on updates, where the old value exists."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        activation = {"self": to_cel(value, schema)}
        if "oldSelf" in rule["rule"]:
            if old is MISSING:
                continue
            activation["oldSelf"] = to_cel(old, schema)
        if not bool(cel_program(rule["rule"]).evaluate(activation)):
            message = (str(cel_program(rule["messageExpression"]).evaluate(activation))
                       if "messageExpression" in rule else rule["message"])
            errors.append(f"{path}{rule.get('fieldPath', '')}: {message}")
    if isinstance(value, dict):
        for key, item in value.items():
            prop = (schema.get("properties") or {}).get(key)
            if prop is not None:
                old_item = old.get(key, MISSING) if isinstance(old, dict) else MISSING
                errors += cel_errors(item, prop, f"{path}.{key}", old_item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            errors += cel_errors(item, schema.get("items", {}), f"{path}[{index}]")  # lists: atomic, no oldSelf
    return errors


def json_path(parts) -> str:
    out = "spec"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def api_server_errors(spec) -> list[str]:
    """Field paths an API server (with kubectl's strict field validation) rejects `spec` for; [] when accepted."""
    defaulted = crdmod.apply_defaults(spec, SPEC_SCHEMA)
    errors = [f"{path}: unknown field" for path in crdmod.unknown_fields(defaulted, SPEC_SCHEMA, "spec")]
    for error in SPEC_VALIDATOR.iter_errors(defaulted):
        if error.validator == "required":  # the API server names the missing field itself
            errors += [f"{json_path([*error.absolute_path, key])}: required" for key in error.validator_value
                       if key not in error.instance]
        else:
            errors.append(f"{json_path(error.absolute_path)}: {error.validator}")
    if errors:
        return errors
    return cel_errors(defaulted, SPEC_SCHEMA, "spec")


def python_errors(spec) -> list[str]:
    try:
        parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "t"},
                    "spec": spec})
    except SpecError as exc:
        return [str(e) for e in exc.errors]
    return []


def paths(errors: list[str]) -> set[str]:
    return {e.split(": ", 1)[0] for e in errors}
