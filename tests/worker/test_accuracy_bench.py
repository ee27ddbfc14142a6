"""benchmarks/accuracy.py (issue 14): its manifests are valid tasks, its shared-only baseline is the adjust stage's
training alone, and (slow) a reduced grid through `fedtask run` prints one JSON line with the peers' ratios."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedtask_operator.core.spec import parse_task
from fedtask_worker.partition import shared_indices
from tests.support.benchmarks import BENCHMARKS, load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield load_benchmark("accuracy", "accuracy_bench")
    sys.modules.pop("accuracy_bench", None)


@pytest.fixture(autouse=True)
def dataset_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


def test_every_cell_of_the_grid_is_a_valid_task_differing_only_where_the_cell_says(bench):
    seen = set()
    for partition in bench.PARTITIONS:
        for strategy in bench.STRATEGIES:
            for adjustment in bench.ADJUSTMENTS:
                document = bench.manifest("mnist", partition, strategy, adjustment, 2, 20, 10, 5)
                task = parse_task(document).spec
                assert task.rounds.max == 20 and task.model.seed == task.data.partition.seed == 2
                assert task.adjustment.enabled == (adjustment != "off")
                if adjustment != "off":
                    assert task.data.shared.fraction == float(adjustment)
                assert (task.training.proximal_mu > 0) == (strategy == "fedprox")
                assert task.aggregation.strategy == {"fedprox": "fedavg"}.get(strategy, strategy)
                scheme = task.data.partition
                assert (scheme.scheme, scheme.classes_per_device if scheme.scheme == "classes" else None,
                        scheme.alpha if scheme.scheme == "dirichlet" else None) == {
                    "iid": ("iid", None, None), "dirichlet": ("dirichlet", None, 0.3),
                    "classes2": ("classes", 2, None), "classes1": ("classes", 1, None)}[partition]
                seen.add(document["metadata"]["name"])
    assert len(seen) == 4 * 4 * 4  # one run's name per cell and seed


def test_the_shared_only_baseline_trains_on_the_shared_set_alone(bench):
    first = bench.shared_only("digits", 0.2, 0, 12)
    again = bench.shared_only("digits", 0.2, 0, 12)
    from fedtask_worker.datasets import load_dataset

    assert first["shared_samples"] == len(shared_indices(load_dataset("digits").y_train, 0.2))
    assert first["curve"] == again["curve"] and len(first["curve"]) == 12  # deterministic, one point per round
    assert first["final"] > first["curve"][0] + 0.1 and first["final"] > 0.3  # it learns (chance is 0.1)
    assert first["best"] == first["curve"][first["best_round"] - 1]
    assert first["best_round"] - 1 == int(np.argmax(first["validation_curve"]))


def test_an_unknown_grid_value_is_refused_in_one_line():
    process = subprocess.run([sys.executable, str(BENCHMARKS / "accuracy.py"), "--partition", "iid,pathological"],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode != 0 and process.stdout == ""
    assert process.stderr.strip() == "--partition: pathological not among iid, dirichlet, classes2, classes1"


@pytest.mark.slow
def test_a_reduced_grid_runs_through_fedtask_run(tmp_path):
    process = subprocess.run([sys.executable, str(BENCHMARKS / "accuracy.py"), "--dataset", "digits", "--partition",
                              "classes2", "--strategy", "fedavg", "--adjustment", "off,0.05", "--seeds", "2",
                              "--rounds", "4", "--markdown", str(tmp_path / "table.md"), "--plot-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-2000:]
    lines = process.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    off, adjusted = out["cells"]
    assert [len(cell["runs"]) for cell in out["cells"]] == [2, 2]
    assert all(run["rounds"] == 4 and len(run["curve"]) == 4 for cell in out["cells"] for run in cell["runs"])
    assert adjusted["gain_vs_off_points"] == pytest.approx(100 * (adjusted["final_mean"] - off["final_mean"]), abs=0.01)
    assert adjusted["vs_shared_only_points"] == pytest.approx(
        100 * (adjusted["final_mean"] - out["shared_only"]["0.05"]["final_mean"]), abs=0.01)
    assert "| classes2 | fedavg |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "accuracy-digits-classes2.png").read_bytes()[:4] == b"\x89PNG"


def test_the_dataset_and_model_options_reach_the_task(bench):
    images = {"kind": "images", "shape": [3, 32, 32], "noise": 3.0}
    document = bench.manifest("synthetic", "classes2", "fedavg", "0.01", 1, 10, 10, 5, None, images, "cnn",
                              {"channels": [16, 32]})
    task = parse_task(document).spec
    assert (task.data.dataset, task.data.args, task.model.name, task.model.args) == (
        "synthetic", images, "cnn", {"channels": [16, 32]})
    plain = parse_task(bench.manifest("mnist", "iid", "fedavg", "off", 1, 10, 10, 5)).spec
    assert (plain.data.args, plain.model.name, plain.model.args) == ({}, "mlp", {})
    process = subprocess.run([sys.executable, str(BENCHMARKS / "accuracy.py"), "--dataset-args", "[1]"],
                             capture_output=True, text=True)
    assert process.returncode == 2 and "must be a JSON object" in process.stderr


def test_every_cell_and_baseline_of_a_partition_plot_has_its_own_line_style(bench):
    cells = {bench.line_style(strategy, adjustment)
             for strategy in bench.STRATEGIES for adjustment in bench.ADJUSTMENTS}
    baselines = {bench.line_style(None, adjustment) for adjustment in bench.ADJUSTMENTS[1:]}
    assert len(cells) == 16 and len(baselines) == 3 and not cells & baselines


def _part(bench, rounds: int, cells: list[tuple[str, str, str, list[float]]], shared_only: dict | None = None) -> dict:
    """A saved part as `--save` writes it, with made-up curves (one per seed)."""
    def runs(finals: list[float]) -> list[dict]:
        return [{"seed": seed, "final": final, "last3": final, "best": final, "best_round": rounds,
                 "curve": [final / 2] * (rounds - 1) + [final]} for seed, final in enumerate(finals)]
    return {"benchmark": "accuracy", "dataset": "mnist", "rounds": rounds, "devices": 10, "per_round": 5,
            "seeds": 2, "partitions": sorted({c[0] for c in cells}), "strategies": sorted({c[1] for c in cells}),
            "adjustments": sorted({c[2] for c in cells}),
            "cells": [{"partition": p, "strategy": s, "adjustment": a, **bench.summary(runs(f)), "runs": runs(f)}
                      for p, s, a, f in cells],
            "shared_only": {a: {**bench.summary(runs(f)), "runs": runs(f)} for a, f in (shared_only or {}).items()}}


def test_saved_parts_merge_into_one_grid_naming_the_cells_not_run(bench, tmp_path, capsys):
    first = _part(bench, 4, [("classes2", "fedavg", "off", [0.80, 0.82]), ("classes2", "fedavg", "0.01", [0.93, 0.95])])
    second = _part(bench, 4, [("classes2", "fedadam", "0.05", [0.96, 0.96])], {"0.05": [0.90, 0.92]})
    paths = [tmp_path / "first.json", tmp_path / "second.json"]
    for path, part in zip(paths, (first, second)):
        path.write_text(json.dumps(part))
    assert bench.main(["--merge", *map(str, paths), "--markdown", str(tmp_path / "grid.md"),
                       "--plot-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert [(c["strategy"], c["adjustment"]) for c in out["cells"]] == [("fedavg", "off"), ("fedavg", "0.01"),
                                                                        ("fedadam", "0.05")]
    assert out["adjustments"] == ["off", "0.01", "0.05"]
    adjusted = out["cells"][1]
    assert adjusted["gain_vs_off_points"] == pytest.approx(13.0)
    assert out["cells"][2]["vs_shared_only_points"] == pytest.approx(5.0)
    table = (tmp_path / "grid.md").read_text()
    assert "| classes2 | fedavg | 0.810 ± 0.010 | 0.940 ± 0.010 | not run |" in table
    assert "| classes2 | fedadam | not run | not run | 0.960 ± 0.000 |" in table
    assert (tmp_path / "accuracy-mnist-classes2.png").read_bytes()[:4] == b"\x89PNG"
    # Parts of different runs (here: 10 rounds against 4) are refused in one line, not mixed.
    paths[1].write_text(json.dumps(_part(bench, 10, [("iid", "fedavg", "off", [0.9, 0.9])])))
    with pytest.raises(SystemExit, match=r"^--merge: the parts differ in dataset, rounds or devices$"):
        bench.main(["--merge", *map(str, paths)])
    assert capsys.readouterr().out == ""
