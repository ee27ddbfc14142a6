"""benchmarks/faults.py with few seeds: `fedtask run` killed (SIGKILL to its process group, or SIGINT) at random points
and resumed completes every time, with every round once, no status regression, and the uninterrupted run's final
model bit for bit."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # ~1-2 min: two uninterrupted runs and two faulted seeds

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
