"""Dataclasses as API schemas (pure): fields that carry their API metadata, decoding JSON into dataclasses with every
error reported at its path, and encoding them back.

Python attributes are snake_case; the JSON names are derived camelCase (`per_round` -> `perRound`) unless a field
sets its own. `spec.py` declares the FederatedTask API with these; `crd.py` renders the same metadata as the CRD.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


D = TypeVar("D", bound="DataclassInstance")


class IntOrString:
    """Annotation marker: a value that may be an integer or a string (Kubernetes quantities)."""


class DateTime(str):
    """Annotation marker: an RFC 3339 timestamp string such as 2026-11-28T04:41:03Z."""


class FreeForm(dict[str, Any]):
    """Annotation marker: an object whose content the schema does not constrain (kept as is)."""


@dataclass(frozen=True)
class FieldInfo:
    doc: str = ""
    json: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    max_length: int | None = None
    max_items: int | None = None
    required: bool = False
    immutable: bool = False  # unchangeable once the object exists (a CEL transition rule `self == oldSelf`)


def api_field(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, doc: str = "",
              **info: Any) -> Any:
    """A dataclass field carrying its API metadata (bounds, enum, pattern, documentation)."""
    if isinstance(info.get("enum"), list):
        info["enum"] = tuple(info["enum"])
    metadata = {"api": FieldInfo(doc=doc, **info)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if isinstance(default, (dict, list)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def json_name(f: dataclasses.Field[Any]) -> str:
    info: FieldInfo | None = f.metadata.get("api")
    if info is not None and info.json:
        return info.json
    return camel_case(f.name)


def field_info(f: dataclasses.Field[Any]) -> FieldInfo:
    return f.metadata.get("api") or FieldInfo()


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule over several fields: a CEL rule in the CRD and the same check in Python."""

    at: tuple[str, ...]  # the dataclass attribute path of the object the rule is attached to, () = the root
    cel: str
    message: str
    field_path: str  # JSON path (from the object) of the field the error is reported on, e.g. ".minReturned"
    check: Callable[..., bool]  # check(obj) -> ok; transition rules: check(old, new) -> ok
    transition: bool = False  # a rule on updates (CEL `oldSelf`): only checked when the object changes
    # A CEL `messageExpression` (the CRD keeps `message` as the API server's fallback) and the Python message for a
    # failing object, naming what failed (e.g. which resource); both empty: `message` everywhere.
    message_expression: str = ""
    describe: Callable[[Any], str] | None = None

    def message_for(self, obj: Any) -> str:
        """The message for `obj`, which failed this (non-transition) rule."""
        return self.describe(obj) if self.describe is not None else self.message


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def is_dataclass_type(tp: Any) -> TypeGuard[type[Any]]:
    """Whether an annotation is a model dataclass (the class itself, not an instance of one)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None`, (T, False) otherwise."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def pattern_hint(pattern: str, hints: Mapping[str, str]) -> str:
    """' (what the pattern means)' for an error message or a reference table."""
    hint = hints.get(pattern)
    return f" ({hint})" if hint else f" (must match {pattern})"


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp) or tp in (dict, FreeForm) or typing.get_origin(tp) is dict:
        return "an object"
    if typing.get_origin(tp) is list:
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean", DateTime: "a timestamp string",
            IntOrString: "an integer or a string"}.get(tp, str(tp))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


class Decoder:
    """Builds dataclasses from their JSON form with defaults and validation, as an API server applies a schema.

    type_rules:    per-item rules of a dataclass wherever it occurs (checked once its fields decoded cleanly).
    pattern_hints: pattern -> what it means, for the error messages.
    forbidden:     dataclass -> {JSON key it does not have: why} (an unknown field someone will try, explained).
    """

    def __init__(self, type_rules: Mapping[type, list[CrossFieldRule]] | None = None,
                 pattern_hints: Mapping[str, str] | None = None,
                 forbidden: Mapping[type, Mapping[str, str]] | None = None):
        self.type_rules = type_rules or {}
        self.pattern_hints = pattern_hints or {}
        self.forbidden = forbidden or {}

    def decode(self, cls: type[D], data: Any, path: str, errors: list[FieldError], strict: bool = True) -> D:
        """Build `cls` from its JSON form, applying defaults; problems are appended to `errors` with their paths.
        `strict=False` ignores unknown fields (an API server prunes them)."""
        if not isinstance(data, dict):
            errors.append(FieldError(path, f"must be an object, not {type(data).__name__}"))
            return cls()
        hints = _hints(cls)
        fields = dataclasses.fields(cls)
        known = {json_name(f) for f in fields}
        errors_before = len(errors)  # the type's rules run only on an object without errors (as an API server's)
        if strict:
            why = self.forbidden.get(cls, {})
            for key in data:
                if key in why:
                    errors.append(FieldError(f"{path}.{key}", f"unknown field: {why[key]}"))
                elif key not in known:
                    errors.append(FieldError(f"{path}.{key}", "unknown field" + _did_you_mean(str(key), known)))
        kwargs = {}
        for f in fields:
            name = json_name(f)
            info = field_info(f)
            value = data.get(name)
            if value is None:
                if info.required:
                    errors.append(FieldError(f"{path}.{name}", "required"))
                continue  # the dataclass default applies
            tp, _ = unwrap_optional(hints[f.name])
            before = len(errors)
            decoded = self._value(value, tp, info, f"{path}.{name}", errors, strict)
            if len(errors) == before:
                kwargs[f.name] = decoded
        obj = cls(**kwargs)
        if len(errors) == errors_before:
            for rule in self.type_rules.get(cls, []):
                if not rule.check(obj):
                    errors.append(FieldError(path + rule.field_path, rule.message_for(obj)))
        return obj

    def _value(self, value: Any, tp: Any, info: FieldInfo, path: str, errors: list[FieldError], strict: bool) -> Any:
        if is_dataclass_type(tp):
            return self.decode(tp, value, path, errors, strict)
        origin = typing.get_origin(tp)
        if origin is list:
            if not isinstance(value, list):
                errors.append(FieldError(path, f"must be a list, not {type(value).__name__}"))
                return []
            if info.max_items is not None and len(value) > info.max_items:
                errors.append(FieldError(path, f"must have at most {info.max_items} items"))
            (item_tp,) = typing.get_args(tp)
            item_info = FieldInfo(pattern=info.pattern) if not dataclasses.is_dataclass(item_tp) else FieldInfo()
            return [self._value(item, item_tp, item_info, f"{path}[{i}]", errors, strict)
                    for i, item in enumerate(value)]
        if origin is dict or tp in (dict, FreeForm):
            if not isinstance(value, dict):
                errors.append(FieldError(path, f"must be an object, not {type(value).__name__}"))
                return {}
            if tp in (dict, FreeForm):
                return copy.deepcopy(value)
            if info.max_items is not None and len(value) > info.max_items:
                errors.append(FieldError(path, f"must have at most {info.max_items} entries"))
            key_tp, value_tp = typing.get_args(tp)
            value_info = FieldInfo(pattern=info.pattern, max_length=info.max_length, minimum=info.minimum,
                                   maximum=info.maximum)
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    errors.append(FieldError(f"{path}.{key}", "keys must be strings"))
                    continue
                if item is None:
                    continue  # an API server drops null values
                out[key] = self._scalar(item, value_tp, value_info, f"{path}.{key}", errors)
            return out
        return self._scalar(value, tp, info, path, errors)

    def _scalar(self, value: Any, tp: Any, info: FieldInfo, path: str, errors: list[FieldError]) -> Any:
        if tp is bool:
            ok = isinstance(value, bool)
        elif tp is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # an API server takes 5.0 for an integer field too
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                value = float(value)
                if value != value or value in (float("inf"), float("-inf")):
                    errors.append(FieldError(path, "must be a finite number"))
                    return None
        elif tp in (str, DateTime):
            ok = isinstance(value, str)
        elif tp is IntOrString:
            ok = (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)
        else:  # pragma: no cover - a model definition error
            raise TypeError(f"unsupported field type {tp!r} at {path}")
        if not ok:
            errors.append(FieldError(path, f"must be {_type_name(tp)}, not {type(value).__name__} {value!r}"))
            return None
        before = len(errors)
        if info.enum is not None and value not in info.enum:
            shown = ", ".join(repr(e) if e == "" else str(e) for e in info.enum)
            errors.append(FieldError(path, f"must be one of {shown}, not {value!r}"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # an IntOrString's integer form too
            if info.minimum is not None:
                if info.exclusive_minimum and not value > info.minimum:
                    errors.append(FieldError(path, f"must be > {format_number(info.minimum)}"))
                elif not info.exclusive_minimum and not value >= info.minimum:
                    errors.append(FieldError(path, f"must be >= {format_number(info.minimum)}"))
            if info.maximum is not None:
                if info.exclusive_maximum and not value < info.maximum:
                    errors.append(FieldError(path, f"must be < {format_number(info.maximum)}"))
                elif not info.exclusive_maximum and not value <= info.maximum:
                    errors.append(FieldError(path, f"must be <= {format_number(info.maximum)}"))
        if isinstance(value, str):
            if info.max_length is not None and len(value) > info.max_length:
                errors.append(FieldError(path, f"must be at most {info.max_length} characters"))
            if info.pattern is not None and not re.search(info.pattern, value):
                errors.append(FieldError(path, f"invalid value {value!r}"
                                               + pattern_hint(info.pattern, self.pattern_hints)))
        return value if len(errors) == before else None


def _did_you_mean(key: str, known: set[str]) -> str:
    lowered = {k.lower().replace("_", ""): k for k in known}
    match = lowered.get(key.lower().replace("_", "").replace("-", ""))
    return f" (did you mean {match}?)" if match else ""


def encode(obj: Any) -> Any:
    """The JSON form of a model object: camelCase keys, None fields left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            out[json_name(f)] = encode(value)
        return out
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    return obj


def value_at(obj: Any, attrs: tuple[str, ...]) -> Any:
    """The object at a dataclass attribute path (() is `obj` itself)."""
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


def immutable_changes(old: Any, new: Any, path: str, message: str) -> list[FieldError]:
    """The fields marked `immutable` that differ between two versions of an object, each reported with `message`."""
    errors = []
    for f in dataclasses.fields(type(new)):
        old_value, new_value = getattr(old, f.name), getattr(new, f.name)
        if old_value is None or new_value is None:
            continue  # transition rules run only where the old and the new object both have the field
        field_path = f"{path}.{json_name(f)}"
        if field_info(f).immutable and old_value != new_value:
            errors.append(FieldError(field_path, message))
        elif dataclasses.is_dataclass(new_value):
            errors += immutable_changes(old_value, new_value, field_path, message)
    return errors
