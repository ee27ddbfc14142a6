"""benchmarks/faults.py with few seeds: `fedtask run` killed (SIGKILL to its process group, or SIGINT) at random points
and resumed completes every time, with every round once, no status regression, and the uninterrupted run's final
model bit for bit. `--target operator`: the operator process SIGKILLed and restarted at random points against the API
emulator, with a crashed and an OOM-killed train pod per seed: the same, and no pod created twice or left running."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # ~1-2 min each: two uninterrupted runs and two faulted seeds

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_killed_and_resumed_runs_lose_and_repeat_nothing():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--seeds", "2", "--rounds", "6"],
                            capture_output=True, text=True, timeout=600)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr[-3000:])
    report = json.loads(lines[0])
    assert result.returncode == 0 and not report["failures"], report
    assert sum(report["faults_injected"].values()) >= 2, report  # each seed is killed at least once
    assert report["runs_completed"] == 2
    assert report["rounds_lost"] == 0 and report["rounds_duplicated"] == 0 and report["status_regressions"] == 0
    assert report["training_deterministic"] is True and report["final_model_identical"] == 2, report


def test_operator_killed_and_restarted_with_failing_pods_loses_and_repeats_nothing():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--target", "operator",
                             "--seeds", "2", "--rounds", "3"], capture_output=True, text=True, timeout=600)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, (result.stdout, result.stderr[-3000:])
    report = json.loads(lines[0])
    assert result.returncode == 0 and not report["failures"], report
    injected = report["faults_injected"]
    assert injected["operator_sigkill"] >= 2, report  # each seed kills the operator at least once (seeds 0, 1: 3)
    assert injected["train_pod_crash"] == 2 and injected["train_pod_oom"] == 2, report
    assert report["runs_completed"] == 2
    assert report["rounds_lost"] == 0 and report["rounds_duplicated"] == 0, report
    assert report["pods_duplicated"] == 0 and report["pods_orphaned"] == 0, report
    assert report["pod_retries_not_injected"] == 0 and report["status_regressions"] == 0, report
    assert report["status_versions_checked"] > 0
    assert report["training_deterministic"] is True and report["final_model_identical"] == 2, report
