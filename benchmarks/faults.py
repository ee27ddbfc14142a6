"""Fault injection for `fedtask run` (the local runtime): kill it at random points of a 10-round task, resume it,
and check what the task's stored record says. Prints one JSON line.

For each seed, a fresh workdir; the run is killed 1 or 2 times (SIGKILL to its process group, like `kill -9` of a
terminal's job, or SIGINT, like Ctrl-C) at a random time within the uninterrupted run's wall time, then started again
with the same command until it exits. Checked per seed:
- the run completes (phase Succeeded) within a bounded number of restarts;
- every round is in status.history exactly once (rounds lost, rounds duplicated);
- the status never goes back: the history seen at each kill is a prefix of the final one, and the round never drops;
- the final global model (DIR/<task>/model.safetensors) is bit-identical to the uninterrupted run's, when two
  uninterrupted runs are themselves bit-identical (training deterministic; else the check is reported as not
  applicable).
The peer is the uninterrupted run in the same process: the time ratio is faulted total / uninterrupted.

    python benchmarks/faults.py [--seeds 20] [--rounds 10]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "examples" / "digits-quick.yaml"
TASK = "digits-quick"
# Devices drawn per round from the task and round alone (time-fair follows measured train times, which differ from run
# to run): the same devices train in every run, so the final model can be compared bit for bit.
POLICY = "random"
MAX_STARTS = 8  # restarts of one seed before it counts as not completed


def command(workdir: Path, rounds: int) -> list[str]:
    return [sys.executable, "-m", "fedtask_operator.cli", "run", str(MANIFEST), "--workdir", str(workdir),
            "--set", f"spec.rounds.max={rounds}", "--set", f"spec.scheduling.policy={POLICY}"]


def record(workdir: Path) -> dict:
    try:
        return json.loads((workdir / TASK / "federatedtask.json").read_text())
    except (OSError, ValueError):
        return {}


def model_hash(workdir: Path) -> str | None:
    path = workdir / TASK / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def start(workdir: Path, rounds: int, log) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(command(workdir, rounds), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def uninterrupted(workdir: Path, rounds: int) -> tuple[float, str | None, dict]:
    started = time.monotonic()
    with open(workdir.parent / f"{workdir.name}.log", "wb") as log:
        code = start(workdir, rounds, log).wait()
    if code != 0:
        raise SystemExit(f"faults.py: the uninterrupted run failed ({code}); see {workdir.parent}")
    return time.monotonic() - started, model_hash(workdir), record(workdir)


def kill_group(process: subprocess.Popen, kind: str) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL if kind == "sigkill" else signal.SIGINT)
    except ProcessLookupError:
        pass


def rounds_of(task: dict) -> list[int]:
    return [entry.get("round") for entry in (task.get("status") or {}).get("history") or []]


def faulted_seed(seed: int, workdir: Path, rounds: int, window: float) -> dict:
    rng = random.Random(seed)
    kills = [(rng.uniform(0.3, window), "sigkill" if rng.random() < 0.75 else "sigint")
             for _ in range(rng.choice((1, 2)))]
    result = {"seed": seed, "injected": {"sigkill": 0, "sigint": 0}, "missed": 0, "starts": 0,
              "regressions": [], "exit_codes": []}
    seen: list[list[int]] = []
    rounds_seen: list[int] = []
    started = time.monotonic()
    with open(workdir.parent / f"{workdir.name}.log", "wb") as log:
        while result["starts"] < MAX_STARTS:
            result["starts"] += 1
            process = start(workdir, rounds, log)
            if kills:
                at, kind = kills.pop(0)
                try:
                    process.wait(timeout=at)
                    result["missed"] += 1  # it ended before the kill time
                except subprocess.TimeoutExpired:
                    kill_group(process, kind)
                    result["injected"][kind] += 1
            code = process.wait()
            result["exit_codes"].append(code)
            task = record(workdir)
            seen.append(rounds_of(task))
            rounds_seen.append((task.get("status") or {}).get("round") or 0)
            if code == 0 and not kills:
                break
    result["seconds"] = time.monotonic() - started
    final = record(workdir)
    history = rounds_of(final)
    result["phase"] = (final.get("status") or {}).get("phase")
    result["history"] = history
    result["lost"] = sorted(set(range(1, rounds + 1)) - set(history))
    result["duplicated"] = sorted({r for r in history if history.count(r) > 1})
    for snapshot in seen:
        if history[:len(snapshot)] != snapshot:
            result["regressions"].append(snapshot)
    if rounds_seen != sorted(rounds_seen):
        result["regressions"].append({"rounds": rounds_seen})
    result["model"] = model_hash(workdir)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="faulted runs, one workdir each (default 20)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the workdirs and logs (printed in the JSON)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.rounds < 1:
        parser.error("--seeds and --rounds must be at least 1")
    base = Path(tempfile.mkdtemp(prefix="fedtask-faults-"))
    try:
        first_seconds, first_hash, first = uninterrupted(base / "uninterrupted-1", args.rounds)
        second_seconds, second_hash, _ = uninterrupted(base / "uninterrupted-2", args.rounds)
        deterministic = first_hash is not None and first_hash == second_hash
        uninterrupted_seconds = min(first_seconds, second_seconds)
        results = [faulted_seed(seed, base / f"seed-{seed}", args.rounds, uninterrupted_seconds * 0.95)
                   for seed in range(args.seeds)]
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    completed = [r for r in results if r["phase"] == "Succeeded" and r["exit_codes"][-1] == 0]
    identical = [r for r in results if r["model"] == first_hash]
    faulted_mean = sum(r["seconds"] for r in results) / len(results)
    summary = {
        "benchmark": "faults", "runtime": "fedtask run (local)", "task": f"{TASK}, {args.rounds} rounds",
        "seeds": args.seeds,
        "faults_injected": {kind: sum(r["injected"][kind] for r in results) for kind in ("sigkill", "sigint")},
        "kills_after_the_run_ended": sum(r["missed"] for r in results),
        "runs_completed": len(completed),
        "rounds_lost": sum(len(r["lost"]) for r in results),
        "rounds_duplicated": sum(len(r["duplicated"]) for r in results),
        "status_regressions": sum(len(r["regressions"]) for r in results),
        "training_deterministic": deterministic,
        "final_model_identical": len(identical) if deterministic else None,
        "starts_max": max(r["starts"] for r in results),
        "uninterrupted_seconds": round(uninterrupted_seconds, 2),
        "faulted_mean_seconds": round(faulted_mean, 2),
        "faulted_vs_uninterrupted": round(faulted_mean / uninterrupted_seconds, 3),
        "failures": [{k: r[k] for k in ("seed", "phase", "history", "lost", "duplicated", "regressions",
                                        "exit_codes")}
                     for r in results if r not in completed or r["lost"] or r["duplicated"] or r["regressions"]
                     or (deterministic and r["model"] != first_hash)],
    }
    if args.keep:
        summary["workdir"] = str(base)
    if first.get("status", {}).get("phase") != "Succeeded":
        summary["failures"].append({"uninterrupted": first.get("status", {}).get("phase")})
    print(json.dumps(summary))
    return 0 if not summary["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
