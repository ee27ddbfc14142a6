"""Issue 13: a corrupt global model through `fedtask run` (the local runtime, real processes). A warm start
(`spec.model.initialUri`) is the global model the first stage reads: one bit flipped in it fails the task clearly with
"digest mismatch" (nothing is trained on it); the same model without digest keys (written by another tool) is read
unverified, as documented in docs/internals.md, and the task succeeds."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def fedtask(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedtask_operator.cli", *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd)


def initial_model(path: Path) -> bytes:
    """digits-quick's own initial model, written by the init stage (so it carries a digest)."""
    result = subprocess.run([sys.executable, "-m", "fedtask_worker", "init", "--output", str(path), "--dataset",
                             "digits", "--model", "mlp", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return path.read_bytes()


def run_task(tmp_path: Path, name: str, initial: Path) -> tuple[subprocess.CompletedProcess, dict]:
    manifest = yaml.safe_load((ROOT / "examples" / "digits-quick.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["model"]["initialUri"] = f"file://{initial}"
    manifest["spec"]["rounds"]["max"] = 1
    manifest["spec"]["devices"].update(count=4, perRound=2)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = fedtask("run", str(path), "--workdir", str(tmp_path / "runs"), cwd=tmp_path)
    return result, json.loads((tmp_path / "runs" / name / "federatedtask.json").read_text())


def test_a_warm_start_model_with_one_bit_flipped_fails_the_task_with_digest_mismatch(tmp_path):
    raw = bytearray(initial_model(tmp_path / "initial.safetensors"))
    position = 8 + struct.unpack("<Q", raw[:8])[0] + 100
    raw[position] ^= 1  # a low mantissa bit of a weight: finite, only the digest tells
    (tmp_path / "initial.safetensors").write_bytes(bytes(raw))

    result, task = run_task(tmp_path, "corrupt-start", tmp_path / "initial.safetensors")

    status = task["status"]
    assert result.returncode != 0 and status["phase"] == "Failed", (result.returncode, status)
    assert "digest mismatch" in status["message"] and "initial.safetensors" in status["message"], status["message"]
    assert not status.get("history"), status  # no round was trained on it
    assert "Traceback" not in result.stdout + result.stderr


def test_a_warm_start_model_without_a_digest_is_read_unverified_and_the_task_succeeds(tmp_path):
    raw = initial_model(tmp_path / "digested.safetensors")
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    header["__metadata__"] = {key: value for key, value in header["__metadata__"].items()
                              if not key.startswith("fedtask_digest")}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    (tmp_path / "foreign.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + size:])

    result, task = run_task(tmp_path, "foreign-start", tmp_path / "foreign.safetensors")

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert task["status"]["phase"] == "Succeeded" and len(task["status"]["history"]) == 1, task["status"]
    # every object the stages wrote (global models, updates, the aggregate) carries a digest that matches
    from fedtask_worker.tensors import check_integrity, read_layout

    written = sorted((tmp_path / "runs" / "store").rglob("*.safetensors"))
    kinds = {path.name if path.parent.name != "updates" else "update" for path in written}
    assert {"global.safetensors", "aggregate.safetensors", "update"} <= kinds, written
    unverified = [path for path in written if not check_integrity(str(path), read_layout(str(path)))]
    assert unverified == [], unverified
