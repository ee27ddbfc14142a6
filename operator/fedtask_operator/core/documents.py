"""YAML and JSON files for the command lines (`fedtask run`, `validate`, `schedule`): every non-empty document, or
one line that names the file and says what is wrong (pure)."""
from __future__ import annotations

import json
import sys
from typing import Any

import yaml


class DocumentError(ValueError):
    """A file a command cannot use; the message names the file and the reason."""


def describe_yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1} column {mark.column + 1}: {problem}"
    return problem


def read_text(path: str) -> str:
    """The file's text; '-' reads standard input."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as err:
        raise DocumentError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DocumentError(f"{path}: cannot read: not UTF-8 text ({err.reason})") from None


def load_documents(path: str) -> list[Any]:
    """Every non-empty document of a YAML file, or the one value of a JSON file (read as JSON: large
    `kubectl get -o json` dumps parse many times faster than through YAML)."""
    text = read_text(path)
    if text.lstrip().startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as err:
            raise DocumentError(f"{path}: invalid JSON: line {err.lineno} column {err.colno}: {err.msg}") from None
    try:
        return [document for document in yaml.safe_load_all(text) if document is not None]
    except yaml.YAMLError as err:
        raise DocumentError(f"{path}: invalid YAML: {describe_yaml_error(err)}") from None
