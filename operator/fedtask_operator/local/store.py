"""A file-backed stand-in for the API server: what a cluster would keep about tasks and pods, kept in a folder.

    DIR/<task>/federatedtask.json    the FederatedTask (metadata, spec with defaults, status as the operator writes it)
    DIR/<task>/pods/<pod>.json       pod records: the manifest plus metadata.uid and the status the kubelet reports
    DIR/<task>/events.jsonl          events, one JSON object per line

Every write is atomic (write a temporary file, then rename), so a run killed at any instant leaves a readable state.
Records are cached in memory; the files are the truth when a run starts.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from fedtask_operator.core.conditions import format_time
from fedtask_operator.core.naming import pinned_node
from fedtask_operator.core.phases import POD_PENDING
from fedtask_operator.local.files import now_utc, write_json_atomic


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, dict] = {}
        self.pods: dict[str, dict[str, dict]] = {}  # task -> pod name -> pod record

    def task_dir(self, name: str) -> Path:
        return self.root / name

    # ---------------------------------------------------------------------------------------------------- tasks
    def apply_task(self, manifest: dict, spec_with_defaults: dict) -> dict:
        """Create the task, or update its spec (a new generation) keeping its status: `kubectl apply` semantics."""
        name = manifest["metadata"]["name"]
        path = self.task_dir(name) / "federatedtask.json"
        existing = self._read(path)
        if existing is None:
            obj = {
                "apiVersion": manifest["apiVersion"], "kind": manifest["kind"],
                "metadata": {**manifest.get("metadata", {}), "namespace": manifest["metadata"].get("namespace")
                             or "default", "uid": str(uuid.uuid4()), "generation": 1,
                             "creationTimestamp": format_time(now_utc())},
                "spec": spec_with_defaults,
                "status": {},
            }
        else:
            obj = existing
            obj.setdefault("status", {})
            metadata = obj.setdefault("metadata", {})
            for key in ("labels", "annotations"):
                if key in manifest["metadata"]:
                    metadata[key] = manifest["metadata"][key]
            if obj.get("spec") != spec_with_defaults:
                obj["spec"] = spec_with_defaults
                metadata["generation"] = int(metadata.get("generation") or 1) + 1
        write_json_atomic(path, obj)
        self.tasks[name] = obj
        self.pods[name] = self._load_pods(name)
        return obj

    def task(self, name: str) -> dict:
        return self.tasks[name]

    def write_status(self, name: str, status: dict) -> bool:
        """Replace the task's status; returns whether it changed (an unchanged status is not rewritten)."""
        obj = self.tasks[name]
        if obj.get("status") == status:
            return False
        obj["status"] = json.loads(json.dumps(status))
        write_json_atomic(self.task_dir(name) / "federatedtask.json", obj)
        return True

    def append_event(self, name: str, event: dict) -> None:
        with open(self.task_dir(name) / "events.jsonl", "a") as handle:
            handle.write(json.dumps(event) + "\n")

    # ----------------------------------------------------------------------------------------------------- pods
    def task_pods(self, name: str) -> list[dict]:
        return list(self.pods.get(name, {}).values())

    def all_pods(self) -> list[dict]:
        return [pod for pods in self.pods.values() for pod in pods.values()]

    def create_pod(self, task: str, manifest: dict) -> tuple[dict, bool]:
        """Record a new pod (uid, creation time, Pending, bound to its node). Returns (record, created)."""
        pods = self.pods.setdefault(task, {})
        name = manifest["metadata"]["name"]
        if name in pods:
            return pods[name], False  # AlreadyExists is success
        pod = json.loads(json.dumps(manifest))
        metadata = pod.setdefault("metadata", {})
        metadata.setdefault("namespace", self.tasks[task]["metadata"].get("namespace", "default"))
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = format_time(now_utc())
        node = pinned_node(pod)
        if node:
            pod["spec"]["nodeName"] = node
        pod["status"] = {"phase": POD_PENDING}
        self._write_pod(task, pod)
        pods[name] = pod
        return pod, True

    def set_pod_status(self, task: str, name: str, status: dict) -> bool:
        pod = self.pods.get(task, {}).get(name)
        if pod is None or pod.get("status") == status:
            return False
        pod["status"] = json.loads(json.dumps(status))
        self._write_pod(task, pod)
        return True

    def delete_pod(self, task: str, name: str) -> bool:
        pod = self.pods.get(task, {}).pop(name, None)
        if pod is None:
            return False  # NotFound is success
        try:
            (self.task_dir(task) / "pods" / f"{name}.json").unlink()
        except FileNotFoundError:
            pass
        return True

    def _write_pod(self, task: str, pod: dict) -> None:
        write_json_atomic(self.task_dir(task) / "pods" / f"{pod['metadata']['name']}.json", pod)

    def _load_pods(self, task: str) -> dict[str, dict]:
        folder = self.task_dir(task) / "pods"
        pods = {}
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                pod = self._read(path)
                if pod is not None:
                    pods[pod["metadata"]["name"]] = pod
        return pods

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
