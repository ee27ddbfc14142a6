"""The fleet of a local run: nodes from a `kubectl get nodes -o yaml|json` file, or a small built-in fleet."""
from __future__ import annotations

import os

from fedtask_operator.core.documents import DocumentError, load_documents
from fedtask_operator.core.naming import DEVICE_LABEL, HOSTNAME_LABEL

BUILTIN_NODE_COUNT = 3


class NodesFileError(DocumentError):
    """The nodes file cannot be used; the message names the file and the field."""


def builtin_nodes(count: int = BUILTIN_NODE_COUNT) -> list[dict]:
    """Ready CPU nodes labelled as devices, each offering this machine's cores and memory."""
    cpus = os.cpu_count() or 1
    try:
        memory_kib = int(open("/proc/meminfo").readline().split()[1])
    except (OSError, ValueError, IndexError):
        memory_kib = 4 * 1024 * 1024
    return [build_node(f"local-{i}", cpu=str(cpus), memory=f"{memory_kib}Ki") for i in range(1, count + 1)]


def build_node(name: str, cpu: str, memory: str, labels: dict | None = None) -> dict:
    capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {HOSTNAME_LABEL: name, "kubernetes.io/os": "linux",
                                              DEVICE_LABEL: "true", **(labels or {})}},
        "spec": {},
        "status": {"capacity": capacity, "allocatable": dict(capacity),
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
    }


def load_nodes(path: str) -> list[dict]:
    """Nodes from a YAML or JSON file: a List (`kubectl get nodes -o yaml`), a single Node, or several documents."""
    documents = load_documents(path)
    nodes: list[dict] = []
    for number, document in enumerate(documents):
        where = f"{path}: document {number + 1}" if len(documents) > 1 else path
        if not isinstance(document, dict):
            raise NodesFileError(f"{where}: expected a Node or a List of Nodes, got {type(document).__name__}")
        if document.get("kind") in ("List", "NodeList") or ("items" in document and "kind" not in document):
            items = document.get("items")
            if not isinstance(items, list):
                raise NodesFileError(f"{where}: items: must be a list of Nodes")
            for index, item in enumerate(items):
                nodes.append(check_node(item, f"{where}: items[{index}]"))
        else:
            nodes.append(check_node(document, where))
    if not nodes:
        raise NodesFileError(f"{path}: no nodes in the file")
    names = [node["metadata"]["name"] for node in nodes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise NodesFileError(f"{path}: duplicate node names: {', '.join(duplicates)}")
    return nodes


def check_node(node, where: str) -> dict:
    if not isinstance(node, dict):
        raise NodesFileError(f"{where}: expected a Node object, got {type(node).__name__}")
    if node.get("kind", "Node") != "Node":
        raise NodesFileError(f"{where}: kind: must be Node, not {node.get('kind')!r}")
    name = (node.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise NodesFileError(f"{where}: metadata.name: required")
    allocatable = (node.get("status") or {}).get("allocatable")
    if allocatable is not None and not isinstance(allocatable, dict):
        raise NodesFileError(f"{where} ({name}): status.allocatable: must be a map of resources")
    node = dict(node)
    node.setdefault("kind", "Node")
    node.setdefault("apiVersion", "v1")
    return node


def node_document_problems(document) -> list[str] | None:
    """For `fedtask validate`: None when the document is not a Node or a List of Nodes, else its problems."""
    if not isinstance(document, dict) or document.get("kind") not in ("Node", "List", "NodeList"):
        return None
    items = document.get("items") if document.get("kind") != "Node" else [document]
    if not isinstance(items, list):
        return ["items: must be a list of Nodes"]
    if document.get("kind") == "List" and not all(isinstance(i, dict) and i.get("kind", "Node") == "Node"
                                                  for i in items):
        return None  # some other List: not ours to judge
    problems = []
    for index, item in enumerate(items):
        where = f"items[{index}]: " if document.get("kind") != "Node" else ""
        try:
            check_node(item, where.rstrip(": ") or "node")
        except NodesFileError as err:
            problems.append(str(err) if where else str(err).removeprefix("node: "))
    return problems
