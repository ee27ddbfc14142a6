"""The benchmark scripts (benchmarks/*.py are scripts, not a package) imported as modules by the tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(script: str, module_name: str | None = None) -> ModuleType:
    """benchmarks/`script`.py executed as module `module_name` (default: the script's name), registered in
    sys.modules first: dataclasses in a benchmark resolve their annotations through it."""
    name = module_name or script
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
    assert spec is not None and spec.loader is not None, f"no benchmark {script}.py in {BENCHMARKS}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
