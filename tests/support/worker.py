"""Small builders shared by the worker tests."""
from __future__ import annotations

import json

import numpy as np

from fedtask_worker import cli
from fedtask_worker.tensors import save_arrays


def write_update(path, arrays: dict[str, np.ndarray], num_samples=10, **metadata) -> str:
    meta = {"num_samples": str(num_samples), **{k: str(v) for k, v in metadata.items()}}
    if num_samples is None:
        del meta["num_samples"]
    save_arrays(str(path), arrays, meta)
    return str(path)


def random_model(seed: int, shapes=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = shapes or {"layer.weight": (6, 5), "layer.bias": (6,)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def run_stage(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    """Run a stage in-process; return (exit code, result JSON or None, stderr)."""
    code = cli.main([str(item) for item in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    return code, (json.loads(lines[-1]) if lines else None), captured.err
