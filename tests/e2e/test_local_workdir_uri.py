"""Issue 12: `fedtask run` in a workdir whose name holds `#`, `?` and `%`. Every file:// URI used to end at the `#`
(the worker's urlparse took the rest for a fragment), so the stages wrote outside the workdir or failed."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.local_run import fedtask, read_task, small_digits_task

pytestmark = pytest.mark.e2e


@pytest.mark.slow  # about 20-25 s: two real rounds of digits
def test_a_workdir_with_uri_characters_runs_to_the_end(tmp_path):
    workdir = tmp_path / "run #1?x=%41"
    manifest = small_digits_task(tmp_path, "hash-run", 2)
    started = time.monotonic()

    result = fedtask("run", str(manifest), "--workdir", str(workdir))

    assert result.returncode == 0, result.stdout + result.stderr
    status = read_task(workdir, "hash-run")["status"]
    assert status["phase"] == "Succeeded" and [entry["round"] for entry in status["history"]] == [1, 2]
    assert status["model"]["uri"].startswith("file://") and "%23" in status["model"]["uri"]
    assert (workdir / "hash-run" / "model.safetensors").read_bytes()[:8]  # the runtime found the model again
    stored = list((workdir / "store").rglob("global.safetensors"))
    assert len(stored) == 3, stored  # round 0 (init), 1 and 2, all inside the workdir
    assert not (tmp_path / "run ").exists()  # nothing written where the old URI ended
    print(f"2 rounds in {Path(workdir).name!r}: {time.monotonic() - started:.1f}s")
