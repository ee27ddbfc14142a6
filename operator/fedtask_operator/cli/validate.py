"""`fedtask validate MANIFEST...`: check FederatedTask manifests as a cluster would (defaults, bounds, enums, unknown
fields, the CRD's CEL rules), one line per problem with file, line and field path; exit 2 when anything is wrong."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import yaml

from fedtask_operator.core.documents import DocumentError, describe_yaml_error, read_text
from fedtask_operator.core.spec import FederatedTask, SpecError, parse_task, with_defaults
from fedtask_operator.local.nodes import node_document_problems

EXIT_OK = 0
EXIT_INVALID = 2


class DuplicateKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys, as Kubernetes' strict decoding does (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@dataclass
class Document:
    where: str  # "path:line" of the document's first line
    content: object


def read_documents(path: str, text: str | None = None) -> list[Document]:
    """The non-empty YAML documents of a file with their start lines; raises DocumentError with a one-line reason."""
    if text is None:
        text = read_text(path)
    loader = DuplicateKeyLoader(text)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1
            content = loader.construct_document(node)
            if content is not None:
                documents.append(Document(f"{path}:{line}", content))
    except yaml.YAMLError as err:
        raise DocumentError(f"{path}: invalid YAML: {describe_yaml_error(err)}") from None
    finally:
        loader.dispose()
    return documents


def load_tasks(paths: list[str]) -> tuple[list[tuple[Document, FederatedTask]], list[str]]:
    """Every FederatedTask in the files, and one line per problem (file:line: field.path: reason)."""
    tasks: list[tuple[Document, FederatedTask]] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            documents = read_documents(path)
        except ValueError as err:
            errors.append(str(err))
            continue
        if not documents:
            errors.append(f"{path}: no FederatedTask in the file")
        for document in documents:
            node_problems = node_document_problems(document.content)  # a fleet file (fedtask run/schedule --nodes)
            if node_problems is not None:
                errors.extend(f"{document.where}: {problem}" for problem in node_problems)
                continue
            try:
                task = parse_task(document.content)
            except SpecError as err:
                errors.extend(f"{document.where}: {error}" for error in err.errors)
                continue
            if task.key in seen:
                errors.append(f"{document.where}: metadata.name: {task.key} is already defined at {seen[task.key]}")
                continue
            seen[task.key] = document.where
            tasks.append((document, task))
    return tasks, errors


# The spec fields that may name the user's own code as `module:callable` (run from the manifest's folder).
USER_CODE_FIELDS = (
    ("spec.model.name", lambda spec: spec.model.name),
    ("spec.data.dataset", lambda spec: spec.data.dataset),
    ("spec.training.step", lambda spec: spec.training.step),
    ("spec.evaluation.function", lambda spec: spec.evaluation.function),
)


@contextlib.contextmanager
def _first_on_path(folder: str) -> Iterator[None]:
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def user_code_problems(task: FederatedTask, folder: str) -> tuple[list[str], list[str]]:
    """(errors, notes) for the task's `module:callable` references, imported as `fedtask run` would (the manifest's
    folder first on the path): a module that fails to import, a missing name, a name that is not callable are errors;
    a module that is not importable here is a note (it may live in the worker image only)."""
    errors: list[str] = []
    notes: list[str] = []
    for field, get in USER_CODE_FIELDS:
        reference = get(task.spec)
        if ":" not in reference:
            continue  # a registered name (mlp, mnist) or empty
        module_name, attribute = reference.split(":", 1)
        with _first_on_path(folder):
            try:
                found = importlib.util.find_spec(module_name)
            except (ImportError, ValueError):
                found = None  # its parent package is missing
            if found is None:
                notes.append(f"{field}: {reference} not checked: no module {module_name!r} here (looked in {folder} "
                             "and the installed packages); the worker image must provide it")
                continue
            try:
                module = importlib.import_module(module_name)
            except (Exception, SystemExit) as error:  # the user's module failing on import: report, don't crash
                errors.append(f"{field}: importing {module_name!r} ({found.origin}) failed: "
                              f"{type(error).__name__}: {error}")
                continue
        target: object = module
        for part in attribute.split("."):
            if not hasattr(target, part):
                errors.append(f"{field}: module {module_name!r} ({found.origin}) has no {attribute!r}")
                break
            target = getattr(target, part)
        else:
            if not callable(target):
                errors.append(f"{field}: {reference} is a {type(target).__name__}, not a callable")
    return errors, notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtask validate",
        description="Check FederatedTask manifests as a Kubernetes API server with the fedtask CRD would "
                    "(kubectl's strict field validation): one line per problem, exit 2 if any.")
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="YAML files (several documents each); - "
                                                                          "reads standard input")
    parser.add_argument("--show-defaults", action="store_true",
                        help="print every valid task with all defaults filled in (YAML)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    parser.add_argument("--no-import", action="store_true",
                        help="do not import the module:callable references (spec.model.name, data.dataset, "
                             "training.step, evaluation.function) to check them; by default the ones importable here "
                             "(from the manifest's folder, as `fedtask run` would) are imported and must be callable")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    tasks, errors = load_tasks(args.manifests)
    notes: list[str] = []
    if not args.no_import:
        checked = []
        for document, task in tasks:
            path = document.where.rsplit(":", 1)[0]
            folder = os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))
            code_errors, code_notes = user_code_problems(task, folder)
            errors += [f"{document.where}: {line}" for line in code_errors]
            notes += [f"{document.where}: {line}" for line in code_notes]
            if not code_errors:
                checked.append((document, task))
        tasks = checked
    for line in errors:
        print(line, file=sys.stderr)
    if args.show_defaults and tasks:
        sys.stdout.write(yaml.safe_dump_all([with_defaults(doc.content) for doc, _ in tasks], sort_keys=False))
    elif not args.quiet:
        for line in notes:
            print(line)
        for document, task in tasks:
            print(f"{document.where}: FederatedTask {task.key}: valid")
    return EXIT_INVALID if errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
