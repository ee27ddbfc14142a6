"""Federated accuracy through the product: every cell is `fedtask run` on a generated manifest (issue 14).

Grid (each axis can be narrowed, so one row reproduces in minutes):
- partitions: iid, dirichlet (alpha 0.3), classes2 (2 classes per device), classes1 (1 class per device);
- strategies: fedavg, fedprox (training.proximalMu > 0), fedavgm, fedadam;
- adjustment: off, or on with the shared set a fraction of the training data (0.005, 0.01, 0.05);
- seeds: model, partition and shuffling seed of each run (reported as mean ± std over seeds).

--dataset/--dataset-args and --model/--model-args pick the data and the network (e.g. the synthetic 3x32x32 images
with the `cnn`, docs/results.md "Beyond MNIST"). Every run has the spec's defaults (MLP, 5 devices per round of 10;
today 1 local epoch, batch 32, lr 0.1; adjustment
1 epoch, batch 32, lr 0.05; data.shared.toDevices 1 while the adjustment is on, 0 without) except for the partition,
the strategy and the adjustment; the design-study flags (--lr, --adjust-lr, --shared-to-devices, ...) set a field
explicitly instead.
Per run it reads the task's status: `final` is the last round's test accuracy (status.accuracy), `last3` the mean
test accuracy of the final 3 rounds, `best` the test accuracy of the round the validation split chose (status.best).

The shared-only baseline isolates the federation's contribution: the server alone trains the same initial model on
the same shared set with the adjustment's budget (rounds x adjustment epochs, its batch size, learning rate and
per-round seeds: the adjust stage's calls to the worker's own `adjust_model`, with no device updates between them).

Prints one JSON line: every cell with its runs, and the ratios against peers of the same run
(`gain_vs_off_points`: adjusted minus off, same partition, strategy, seeds; `vs_shared_only_points`: the cell minus
the shared-only baseline of its shared fraction). Optionally a plot per partition (--plot-dir, matplotlib) and a
markdown table (--markdown).

    .venv/bin/python benchmarks/accuracy.py --partition classes2 --strategy fedavg --adjustment off,0.01 --seeds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "worker_image"))
from fedtask_operator.core.spec import AdjustmentSpec  # noqa: E402  (the spec's defaults, for the baseline)
from fedtask_worker.stages.common import json_object  # noqa: E402  (the worker's own --model-args parser)

ADJUST_DEFAULTS = AdjustmentSpec()
FEDTASK = ROOT / ".venv" / "bin" / "fedtask"

PARTITIONS = {
    "iid": {"scheme": "iid"},
    "dirichlet": {"scheme": "dirichlet", "alpha": 0.3},
    "classes2": {"scheme": "classes", "classesPerDevice": 2},
    "classes1": {"scheme": "classes", "classesPerDevice": 1},
}
STRATEGIES = {
    "fedavg": ({"strategy": "fedavg"}, {}),
    "fedprox": ({"strategy": "fedavg"}, {"proximalMu": 0.1}),
    "fedavgm": ({"strategy": "fedavgm", "serverLearningRate": 1.0, "serverMomentum": 0.9}, {}),
    # The spec's serverLearningRate default (1.0) is FedAvgM's; Adam's normalised step needs a smaller one.
    "fedadam": ({"strategy": "fedadam", "serverLearningRate": 0.01, "serverMomentum": 0.9}, {}),
}
TRAINING_KNOBS = {"lr": "learningRate", "local_epochs": "localEpochs", "batch_size": "batchSize",
                  "momentum": "momentum"}
ADJUSTMENT_KNOBS = {"adjust_epochs": "epochs", "adjust_lr": "learningRate", "adjust_decay": "learningRateDecay",
                    "distill": "distillation"}
ADJUSTMENTS = ("off", "0.005", "0.01", "0.05")
OFF_SHARED_FRACTION = 0.01  # the spec default; with the adjustment off the devices hold the rest all the same


def manifest(dataset: str, partition: str, strategy: str, adjustment: str, seed: int, rounds: int,
             devices: int, per_round: int, design: dict | None = None, dataset_args: dict | None = None,
             model: str = "mlp", model_args: dict | None = None) -> dict:
    """The task of one run; `design` changes the adjustment's defaults (adjust_epochs, adjust_lr) or sends a share
    of the shared set to every device (shared_to_devices), for the design study."""
    design = design or {}
    aggregation, training = STRATEGIES[strategy]
    enabled = adjustment != "off"
    fraction = float(adjustment) if enabled else OFF_SHARED_FRACTION
    shared: dict = {"fraction": fraction}
    if design.get("shared_to_devices") is not None:
        shared["toDevices"] = design["shared_to_devices"]
    # Only what the design study changes is written: everything else is the spec's default.
    training = {**{spec: design[key] for key, spec in TRAINING_KNOBS.items() if design.get(key) is not None},
                **training}
    adjusting = {spec: design[key] for key, spec in ADJUSTMENT_KNOBS.items() if design.get(key) is not None}
    return {
        "apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
        "metadata": {"name": f"acc-{partition}-{strategy}-{adjustment.replace('.', 'p')}-s{seed}"},
        "spec": {
            "model": {"name": model, "seed": seed, **({"args": model_args} if model_args else {})},
            "data": {"dataset": dataset, "source": "builtin", **({"args": dataset_args} if dataset_args else {}),
                     "partition": {**PARTITIONS[partition], "seed": seed}, "shared": shared},
            "devices": {"count": devices, "perRound": per_round,
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}},
            "training": training,
            "aggregation": aggregation,
            "adjustment": {"enabled": enabled, **adjusting},
            "rounds": {"max": rounds},
        },
    }


def fedtask_run(document: dict, folder: Path) -> dict:
    name = document["metadata"]["name"]
    path = folder / f"{name}.json"
    path.write_text(json.dumps(document))
    workdir = folder / "runs"
    started = time.perf_counter()
    result = subprocess.run([str(FEDTASK), "run", str(path), "--workdir", str(workdir)], cwd=ROOT,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"fedtask run {name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    status = json.loads((workdir / name / "federatedtask.json").read_text())["status"]
    history = status["history"]
    tests = [entry["accuracy"] for entry in history]
    return {"seed": document["spec"]["model"]["seed"], "seconds": round(seconds, 1), "rounds": len(history),
            "final": tests[-1], "last3": statistics.fmean(tests[-3:]), "best": status["best"]["accuracy"],
            "best_round": status["best"]["round"], "curve": tests,
            "validation_curve": [entry.get("validationAccuracy") for entry in history]}


def shared_only(dataset_name: str, fraction: float, seed: int, rounds: int, epochs: int = 1,
                learning_rate: float = 0.01, dataset_args: dict | None = None, model: str = "mlp",
                model_args: dict | None = None, decay: float = 1.0) -> dict:
    """The server alone: the adjust stage's fine-tuning, round after round, with no devices in between."""
    from fedtask_worker.datasets import load_dataset
    from fedtask_worker.models import build_model
    from fedtask_worker.partition import shared_indices
    from fedtask_worker.stages.adjust import round_learning_rate
    from fedtask_worker.training import adjust_model, configure_threads, evaluate

    configure_threads()
    dataset = load_dataset(dataset_name, dataset_args)
    network = build_model(model, dataset.input_shape, dataset.num_classes, model_args, seed=seed)
    rows = shared_indices(dataset.y_train, fraction)
    x, y = dataset.x_train[rows], dataset.y_train[rows]
    curve, validation = [], []
    for round_ in range(1, rounds + 1):
        adjust_model(network, x, y, epochs=epochs, batch_size=32,
                     learning_rate=round_learning_rate(learning_rate, decay, round_),
                     seed=seed * 100003 + round_)
        curve.append(evaluate(network, dataset.x_test, dataset.y_test)[0])
        validation.append(evaluate(network, dataset.x_val, dataset.y_val)[0])
    best = max(range(rounds), key=lambda index: validation[index])
    return {"seed": seed, "shared_samples": int(len(rows)), "final": curve[-1], "last3": statistics.fmean(curve[-3:]),
            "best": curve[best], "best_round": best + 1, "curve": curve, "validation_curve": validation}


def summary(runs: list[dict]) -> dict:
    out: dict = {}
    for key in ("final", "last3", "best"):
        values = [run[key] for run in runs]
        out[f"{key}_mean"] = round(statistics.fmean(values), 4)
        out[f"{key}_std"] = round(statistics.pstdev(values), 4) if len(values) > 1 else 0.0
    return out


def listed(text: str, allowed, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SystemExit(f"--{what}: {', '.join(unknown) or 'nothing given'} not among {', '.join(allowed)}")
    return items


def cell_text(cell: dict | None, key: str = "final") -> str:
    if cell is None:
        return "not run"
    return f"{cell[key + '_mean']:.3f} ± {cell[key + '_std']:.3f}"


MEASURES = {"final": "test accuracy of the last round",
            "best": "test accuracy of the round the validation split chose (status.best)"}


def described(args: dict | None) -> str:
    return f" {json.dumps(args)}" if args else ""


def markdown(out: dict, adjustments: list[str]) -> str:
    heads = ["off" if a == "off" else f"adjusted, {float(a) * 100:g}% shared" for a in adjustments]
    cells = {(c["partition"], c["strategy"], c["adjustment"]): c for c in out["cells"]}
    lines: list[str] = []
    for key, meaning in MEASURES.items():
        lines += [f"Dataset {out['dataset']}{described(out.get('dataset_args'))}, model {out.get('model', 'mlp')}"
                  f"{described(out.get('model_args'))}, {out['rounds']} rounds, {out['devices']} devices "
                  f"({out['per_round']} per round), {out['seeds']} seeds; {meaning}, mean ± std over seeds "
                  "(benchmarks/accuracy.py).", "",
                  "| partition | strategy | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
        for partition in out["partitions"]:
            for strategy in out["strategies"]:
                if any((partition, strategy, a) in cells for a in adjustments):
                    row = [cell_text(cells.get((partition, strategy, a)), key) for a in adjustments]
                    lines.append(f"| {partition} | {strategy} | " + " | ".join(row) + " |")
        if out.get("shared_only"):
            row = [("—" if a == "off" else cell_text(out["shared_only"].get(a), key)) for a in adjustments]
            lines.append("| — | shared set only (server alone, same budget) | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


STRATEGY_COLOURS = {"fedavg": "tab:blue", "fedprox": "tab:orange", "fedavgm": "tab:green", "fedadam": "tab:red"}
ADJUSTMENT_STYLES = {"off": ":", "0.005": "-.", "0.01": "-", "0.05": "--"}


def line_style(strategy: str | None, adjustment: str) -> tuple[str, str]:
    """A plot line's colour (the strategy; grey for the shared-only baseline, strategy None) and line style (the
    adjustment), so the 16 cells and 3 baselines of a partition's plot stay apart."""
    return (STRATEGY_COLOURS[strategy] if strategy else "grey"), ADJUSTMENT_STYLES[adjustment]


def plot(out: dict, folder: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for partition in out["partitions"]:
        cells = [c for c in out["cells"] if c["partition"] == partition]
        if not cells:
            continue
        figure, axes = plt.subplots(figsize=(9, 4.8), dpi=100)
        for cell in sorted(cells, key=lambda c: (list(STRATEGIES).index(c["strategy"]),
                                                 ADJUSTMENTS.index(c["adjustment"]))):
            curves = [run["curve"] for run in cell["runs"]]
            mean = [statistics.fmean(values) for values in zip(*curves)]
            off = cell["adjustment"] == "off"
            label = f"{cell['strategy']}, {'off' if off else 'adjusted ' + cell['adjustment']}"
            colour, style = line_style(cell["strategy"], cell["adjustment"])
            axes.plot(range(1, len(mean) + 1), mean, style, color=colour, linewidth=1.2, label=label)
        for fraction, baseline in sorted((out.get("shared_only") or {}).items(),
                                         key=lambda item: ADJUSTMENTS.index(item[0])):
            curves = [run["curve"] for run in baseline["runs"]]
            mean = [statistics.fmean(values) for values in zip(*curves)]
            colour, style = line_style(None, fraction)
            axes.plot(range(1, len(mean) + 1), mean, style, color=colour, linewidth=1,
                      label=f"shared only {fraction}")
        axes.set_xlabel("round")
        axes.set_ylabel("test accuracy (mean over seeds)")
        axes.set_title(f"{out['dataset']}, partition {partition}")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        figure.tight_layout()
        path = folder / f"accuracy-{out['dataset']}-{partition}.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(str(path))
    return written


def compare(out: dict) -> None:
    """The peers' ratios, in points of final test accuracy: adjusted vs off (same partition and strategy), and any
    cell vs the shared-only baseline of its shared fraction."""
    cells = {(c["partition"], c["strategy"], c["adjustment"]): c for c in out["cells"]}
    for cell in out["cells"]:
        off = cells.get((cell["partition"], cell["strategy"], "off"))
        if off is not None and cell["adjustment"] != "off":
            cell["gain_vs_off_points"] = round(100 * (cell["final_mean"] - off["final_mean"]), 2)
        baseline = (out.get("shared_only") or {}).get(cell["adjustment"])
        if baseline is not None:
            cell["vs_shared_only_points"] = round(100 * (cell["final_mean"] - baseline["final_mean"]), 2)


def merged(args: argparse.Namespace) -> int:
    """One table, one plot per partition and one JSON line from several saved parts (same dataset and rounds)."""
    parts = [json.loads(path.read_text()) for path in args.merge]
    first = parts[0]
    for part in parts[1:]:
        if (part["dataset"], part["rounds"], part["devices"], part["per_round"]) != (
                first["dataset"], first["rounds"], first["devices"], first["per_round"]):
            raise SystemExit("--merge: the parts differ in dataset, rounds or devices")
    out = {key: first[key] for key in ("benchmark", "dataset", "rounds", "devices", "per_round")}
    out.update({key: first[key] for key in ("dataset_args", "model", "model_args") if key in first})
    out["seeds"] = sorted({part["seeds"] for part in parts})[0]
    out["partitions"] = [p for p in PARTITIONS if any(p in part["partitions"] for part in parts)]
    out["strategies"] = [s for s in STRATEGIES if any(s in part["strategies"] for part in parts)]
    adjustments = [a for a in ADJUSTMENTS if any(a in part["adjustments"] for part in parts)]
    out["adjustments"] = adjustments
    out["cells"] = [cell for part in parts for cell in part["cells"]]
    out["shared_only"] = {key: value for part in parts for key, value in (part.get("shared_only") or {}).items()}
    compare(out)
    if args.plot_dir:
        out["plots"] = plot(out, args.plot_dir)
    if args.markdown:
        args.markdown.write_text(markdown(out, adjustments))
    print(json.dumps(out))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "digits", "synthetic"])
    parser.add_argument("--dataset-args", type=json_object, default={},
                        help='spec.data.args as JSON, e.g. \'{"kind": "images", "shape": [3, 32, 32]}\'')
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn", "resnet"], help="spec.model.name")
    parser.add_argument("--model-args", type=json_object, default={}, help="spec.model.args as JSON")
    parser.add_argument("--partition", default=",".join(PARTITIONS), help="comma-separated: " + ", ".join(PARTITIONS))
    parser.add_argument("--strategy", default=",".join(STRATEGIES), help="comma-separated: " + ", ".join(STRATEGIES))
    parser.add_argument("--adjustment", default=",".join(ADJUSTMENTS),
                        help="comma-separated: off or a shared fraction among " + ", ".join(ADJUSTMENTS[1:]))
    parser.add_argument("--seeds", type=int, default=3, help="runs per cell, seeds 0..N-1 (default 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start the seeds here (more seeds for a cell measured before: --first-seed 3)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--no-baseline", action="store_true", help="skip the shared-only baseline")
    design = parser.add_argument_group("design study (defaults: the spec's)")
    design.add_argument("--lr", type=float, help="spec.training.learningRate")
    design.add_argument("--local-epochs", type=int, help="spec.training.localEpochs")
    design.add_argument("--batch-size", type=int, help="spec.training.batchSize")
    design.add_argument("--momentum", type=float, help="spec.training.momentum (device SGD momentum)")
    design.add_argument("--adjust-epochs", type=int, help="spec.adjustment.epochs")
    design.add_argument("--adjust-lr", type=float, help="spec.adjustment.learningRate")
    design.add_argument("--adjust-decay", type=float, help="spec.adjustment.learningRateDecay")
    design.add_argument("--distill", type=float,
                        help="spec.adjustment.distillation (FedDF; the shared-only baseline stays plain fine-tuning)")
    design.add_argument("--shared-to-devices", type=float,
                        help="spec.data.shared.toDevices: the share of the shared set every device trains on")
    parser.add_argument("--plot-dir", type=Path, help="write accuracy-<dataset>-<partition>.png there")
    parser.add_argument("--markdown", type=Path, help="write the table there")
    parser.add_argument("--save", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: merge the lines earlier runs saved (--save) into one table, plots and line")
    args = parser.parse_args(argv)
    if args.merge:
        return merged(args)
    partitions = listed(args.partition, PARTITIONS, "partition")
    strategies = listed(args.strategy, STRATEGIES, "strategy")
    adjustments = listed(args.adjustment, ADJUSTMENTS, "adjustment")
    if args.seeds < 1 or args.rounds < 1 or args.devices < 1 or not 1 <= args.per_round <= args.devices:
        raise SystemExit("--seeds, --rounds, --devices >= 1 and 1 <= --per-round <= --devices required")
    if not FEDTASK.exists():
        raise SystemExit(f"{FEDTASK} is missing: make venv first")
    if args.first_seed < 0:
        raise SystemExit("--first-seed must be >= 0")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    changes = {"lr": args.lr, "local_epochs": args.local_epochs, "batch_size": args.batch_size,
               "momentum": args.momentum, "adjust_epochs": args.adjust_epochs, "adjust_lr": args.adjust_lr,
               "adjust_decay": args.adjust_decay, "distill": args.distill,
               "shared_to_devices": args.shared_to_devices}
    changes = {key: value for key, value in changes.items() if value is not None}
    out: dict = {"benchmark": "accuracy", "dataset": args.dataset, "dataset_args": args.dataset_args,
                 "model": args.model, "model_args": args.model_args, "rounds": args.rounds, "devices": args.devices,
                 "per_round": args.per_round, "seeds": args.seeds, "first_seed": args.first_seed,
                 "partitions": partitions, "strategies": strategies, "adjustments": adjustments, "design": changes,
                 "cells": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        for partition in partitions:
            for strategy in strategies:
                for adjustment in adjustments:
                    runs = [fedtask_run(manifest(args.dataset, partition, strategy, adjustment, seed, args.rounds,
                                                 args.devices, args.per_round, changes, args.dataset_args,
                                                 args.model, args.model_args), Path(tmp))
                            for seed in seeds]
                    out["cells"].append({"partition": partition, "strategy": strategy, "adjustment": adjustment,
                                         **summary(runs), "runs": runs})
                    print(f"{partition} {strategy} {adjustment}: {cell_text(out['cells'][-1])}", file=sys.stderr)
    if not args.no_baseline:
        sys.path.insert(0, str(ROOT / "worker_image"))
        out["shared_only"] = {}
        for adjustment in adjustments:
            if adjustment != "off":
                runs = [shared_only(args.dataset, float(adjustment), seed, args.rounds,
                                    changes.get("adjust_epochs", ADJUST_DEFAULTS.epochs),
                                    changes.get("adjust_lr", ADJUST_DEFAULTS.learning_rate), args.dataset_args,
                                    args.model, args.model_args,
                                    changes.get("adjust_decay", ADJUST_DEFAULTS.learning_rate_decay))
                        for seed in seeds]
                out["shared_only"][adjustment] = {**summary(runs), "runs": runs}
    compare(out)
    out["seconds"] = round(time.perf_counter() - started, 1)
    if args.plot_dir:
        out["plots"] = plot(out, args.plot_dir)
    if args.markdown:
        args.markdown.write_text(markdown(out, adjustments))
    line = json.dumps(out)
    if args.save:
        args.save.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("FEDTASK_TORCH_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
