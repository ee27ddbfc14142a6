"""The local runtime's progress lines, summary table and accuracy plot."""
from __future__ import annotations

import io

from fedtask_operator.local.progress import Progress, plot_accuracy, progress_fields, progress_line, summary_table


def task(phase="Running", round_=3, stage="Training", accuracy=0.8, history=2) -> dict:
    return {"spec": {"rounds": {"max": 10}},
            "status": {"phase": phase, "round": round_, "stage": stage, "accuracy": accuracy,
                       "devices": [{"state": "Succeeded"}, {"state": "Running"}],
                       "history": [{"round": r, "accuracy": 0.5 + r / 100} for r in range(1, history + 1)],
                       "best": {"round": history, "accuracy": 0.5 + history / 100}}}


def test_a_progress_line_shows_round_stage_devices_accuracy_and_a_bar():
    line = progress_line(progress_fields("mnist", task()), elapsed=12.0)

    assert line.split()[:4] == ["mnist", "round", "3/10", "Training"]
    assert "1/2 devices" in line and "acc 0.8000" in line
    assert "[####----------------]  20%" in line


def test_a_custom_evaluation_function_is_shown_by_its_own_name():
    custom = task(accuracy=0.93)
    custom["spec"]["evaluation"] = {"function": "friedman:r2"}
    line = progress_line(progress_fields("reg", custom), elapsed=1.0)
    assert "r2 0.9300" in line and " acc " not in line
    assert "acc 0.8000" in progress_line(progress_fields("mnist", task()), elapsed=1.0)

    header = summary_table({"reg": custom}, {}, {}).splitlines()[0]
    assert "FINAL R2" in header and "BEST R2 (ROUND)" in header and "ACC" not in header
    mixed = summary_table({"reg": custom, "mnist": task()}, {}, {}).splitlines()[0]
    assert "FINAL SCORE" in mixed
    assert "FINAL ACC" in summary_table({"mnist": task()}, {}, {}).splitlines()[0]


def test_plain_output_prints_a_line_per_change_only():
    out = io.StringIO()
    progress = Progress(out, live=False)

    progress.update({"a": task()})
    progress.update({"a": task()})
    progress.update({"a": task(stage="Aggregating")})

    assert len(out.getvalue().splitlines()) == 2


def test_live_output_redraws_one_line_per_task_in_place():
    out = io.StringIO()
    progress = Progress(out, live=True)

    progress.update({"a": task(), "b": task(round_=1)}, force=True)
    progress.update({"a": task(), "b": task(round_=2)}, force=True)

    assert out.getvalue().count("\x1b[2F\x1b[J") == 1  # the second draw replaces the two lines of the first


def test_summary_table_lists_every_task():
    table = summary_table({"a": task(phase="Succeeded", history=10), "b": task(phase="Failed", history=0)},
                          {"a": 3.0}, {"a": "/m.safetensors"})

    lines = table.splitlines()
    assert lines[0].split()[:3] == ["TASK", "PHASE", "ROUNDS"]
    assert lines[1].split()[:3] == ["a", "Succeeded", "10"] and "0.6000 (10)" in lines[1]
    assert lines[2].split()[:3] == ["b", "Failed", "0"]


def test_accuracy_plot_is_a_png(tmp_path):
    path = plot_accuracy("a", task(history=5)["status"]["history"], tmp_path / "accuracy.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_accuracy("a", [], tmp_path / "none.png") is None
