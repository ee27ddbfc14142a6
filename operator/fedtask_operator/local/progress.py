"""What `fedtask run` shows: one live line per task, events, a summary table, and an accuracy plot per task."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from fedtask_operator.core.compaction import round_devices
from fedtask_operator.core.phases import FINISHED_PHASES, PENDING, STATE_SUCCEEDED, SUCCEEDED, UNFINISHED_STATES

BAR_WIDTH = 20


def metric_name(spec: dict) -> str:
    """What the score is called: `acc`, or the name of spec.evaluation.function's callable (`friedman:r2` -> `r2`)."""
    function = str((spec.get("evaluation") or {}).get("function") or "")
    return function.rsplit(":", 1)[1].rsplit(".", 1)[-1] if ":" in function else "acc"


def progress_fields(name: str, task: dict) -> dict:
    status = task.get("status") or {}
    spec = task.get("spec") or {}
    max_rounds = int((spec.get("rounds") or {}).get("max") or 0)
    history = status.get("history") or []
    done = len({entry.get("round") for entry in history})
    if status.get("phase") == SUCCEEDED:
        done = max_rounds = max(done, 1) if not max_rounds else max_rounds
    devices = round_devices(status, name)
    running = sum(1 for device in devices if device.get("state") in UNFINISHED_STATES)
    returned = sum(1 for device in devices if device.get("state") == STATE_SUCCEEDED)
    return {
        "name": name,
        "phase": status.get("phase") or PENDING,
        "round": status.get("round") or 0,
        "max_rounds": max_rounds,
        "stage": status.get("stage") or "",
        "devices": len(devices), "running": running, "returned": returned,
        "accuracy": status.get("accuracy"), "metric": metric_name(spec),
        "fraction": min(1.0, done / max_rounds) if max_rounds else 0.0,
    }


def progress_line(fields: dict, elapsed: float, width: int = 120) -> str:
    filled = int(round(fields["fraction"] * BAR_WIDTH))
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    accuracy = f"{fields['accuracy']:.4f}" if isinstance(fields["accuracy"], (int, float)) else "  -   "
    stage = fields["stage"] if fields["phase"] not in FINISHED_PHASES else fields["phase"]
    devices = f"{fields['returned']}/{fields['devices']} devices" if fields["devices"] else ""
    line = (f"{fields['name']:<24.24} round {fields['round']:>3}/{fields['max_rounds']:<3} {stage:<12} "
            f"{devices:<12} {fields['metric']} {accuracy} [{bar}] {fields['fraction'] * 100:3.0f}% {elapsed:6.1f}s")
    return line[:width]


class Progress:
    """Live lines on a terminal (redrawn in place), plain lines on changes otherwise."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.started = time.monotonic()
        self.drawn = 0  # live lines currently on screen
        self.last: dict[str, tuple] = {}
        self.last_draw = 0.0

    def message(self, text: str) -> None:
        """A line that stays (events, warnings), printed above the live lines."""
        self._clear()
        print(text, file=self.stream, flush=True)
        self.drawn = 0

    def update(self, tasks: dict[str, dict], force: bool = False) -> None:
        fields = {name: progress_fields(name, task) for name, task in tasks.items()}
        elapsed = time.monotonic() - self.started
        if self.live:
            now = time.monotonic()
            if not force and now - self.last_draw < 0.1:
                return
            self.last_draw = now
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self._clear()
            lines = [progress_line(f, elapsed, width) for f in fields.values()]
            print("\n".join(lines), file=self.stream, flush=True)
            self.drawn = len(lines)
            return
        for name, f in fields.items():
            key = (f["phase"], f["round"], f["stage"])
            if self.last.get(name) != key:
                self.last[name] = key
                print(progress_line(f, elapsed), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.live and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0


def summary_table(tasks: dict[str, dict], elapsed: dict[str, float], models: dict[str, str]) -> str:
    metrics = {metric_name(task.get("spec") or {}) for task in tasks.values()}
    metric = metrics.pop().upper() if len(metrics) == 1 else "SCORE"  # tasks with different metrics: SCORE
    header = ("TASK", "PHASE", "ROUNDS", f"FINAL {metric}", f"BEST {metric} (ROUND)", "WALL", "MODEL")
    rows = [header]
    for name, task in tasks.items():
        status = task.get("status") or {}
        history = status.get("history") or []
        best = status.get("best") or {}
        best_text = (f"{best['accuracy']:.4f} ({best.get('round')})"
                     if isinstance(best.get("accuracy"), (int, float)) else "-")
        final = status.get("accuracy")
        rows.append((name, status.get("phase") or PENDING, str(len(history)),
                     f"{final:.4f}" if isinstance(final, (int, float)) else "-", best_text,
                     f"{elapsed.get(name, 0.0):.1f}s", models.get(name, "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def plot_accuracy(task_name: str, history: list[dict], path: Path) -> Path | None:
    """accuracy.png: the global model's test accuracy per round, its validation accuracy beside it. None when there is
    nothing to plot."""
    points = [(entry["round"], entry["accuracy"]) for entry in history
              if isinstance(entry.get("accuracy"), (int, float))]
    validation = [(entry["round"], entry["validationAccuracy"]) for entry in history
                  if isinstance(entry.get("validationAccuracy"), (int, float))]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds, accuracies = zip(*points)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(rounds, accuracies, marker="o", markersize=3, label="test split (status.accuracy)")
    if validation:
        axes.plot(*zip(*validation), linestyle="--", linewidth=1, label="validation split (decisions)")
        axes.legend(loc="lower right")
    axes.set_xlabel("round")
    axes.set_ylabel("accuracy (global model after adjustment)")
    axes.set_title(task_name)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)
    return path
