"""benchmarks/scale.py, small: the pod index keeps far less than a kilobyte per foreign pod (tracemalloc, so not
timing-sensitive) and a fraction of what the deep-copying index kept; the scheduling pass from summaries runs."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # ~20 s: a subprocess building fleets and 2000 pods twice

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_foreign_pods_cost_the_index_little():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--foreign-pods", "2000",
                             "--nodes", "1000", "--tasks", "10", "--repeat", "1", "--no-process"],
                            capture_output=True, text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 1, (result.stdout, result.stderr[-3000:])
    report = json.loads(lines[0])
    assert report["index_bytes_per_pod"] <= 1024, report
    assert report["index_ratio_vs_old"] < 0.1, report
    assert report["pods_in_pass"] == 1000 and report["pass_seconds_operator"] > 0
