"""benchmarks/bench_hostile_aggregate.py at reduced size: the aggregate stage's own peak memory does not move with a
hostile header and grows by far less than N x model with N valid updates."""
import json
import pathlib
import subprocess
import sys

BENCHMARK = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_hostile_aggregate.py"


def test_hostile_header_and_many_updates_keep_the_aggregate_stage_small():
    process = subprocess.run([sys.executable, str(BENCHMARK), "--params", "50000", "--count", "200",
                              "--header-mb", "40"], capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-2000:]
    result = json.loads(process.stdout)
    assert result["hostile_header_rss_over_baseline_mb"] < 5, result
    assert "over the limit" in result["hostile_rejected_reason"]
    assert result["many_rss_over_baseline_mb"] < result["many_count_x_model_mb"] / 4, result
