"""`fedtask run examples/shared-pool.yaml`: two tasks share one pool of simulated devices, real processes and real
training; every learning period assigns both jointly and a device trains one of them at a time."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_two_tasks_of_one_pool_take_disjoint_devices_in_every_period(tmp_path):
    workdir = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "run", "examples/shared-pool.yaml",
                             "--workdir", str(workdir)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = {name: json.loads((workdir / name / "federatedtask.json").read_text())["status"]
                for name in ("lab-classes", "lab-dirichlet")}
    by_period: dict[int, list[set]] = {}
    for status in statuses.values():
        assert status["phase"] == "Succeeded"
        periods = [record["period"] for record in status["history"]]
        assert periods == sorted(set(periods)), periods  # one period per round, in order
        for record in status["history"]:
            by_period.setdefault(record["period"], []).append(set(record["devices"]))
        assert 0 < status["fairness"] <= 1 and status["period"] == periods[-1]
        assert sum(status["participation"].values()) == 4 * 6  # every turn is in the ledger
    for period, rounds in by_period.items():
        if len(rounds) == 2:  # both tasks were assigned in this period: never the same device
            assert not rounds[0] & rounds[1], (period, rounds)
    assert any(len(rounds) == 2 for rounds in by_period.values()), "the tasks never shared a period"
