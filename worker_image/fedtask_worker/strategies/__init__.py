"""Aggregation strategies. Each lives in its own module `<name with _>.py` that defines `STRATEGY` (a Strategy
subclass); adding one is adding one file and its name to NAMES."""
from __future__ import annotations

import importlib

from ..errors import BadInput
from .base import Job, Options, Strategy

NAMES = ("fedavg", "fedavgm", "fedadam", "median", "trimmed-mean", "krum")


def get_strategy(name: str) -> Strategy:
    if name not in NAMES:
        raise BadInput(f"--strategy {name!r} is not one of {', '.join(NAMES)}")
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return module.STRATEGY()


__all__ = ["NAMES", "Job", "Options", "Strategy", "get_strategy"]
