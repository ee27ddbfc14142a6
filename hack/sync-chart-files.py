#!/usr/bin/env python3
"""Copy the chart's embedded files from their single sources of truth into helm/fedtask/files/.

Helm can only read files inside the chart, so the CRD (crds/), the operator's RBAC rules (deploy/rbac/rules.yaml)
and the Grafana dashboard (dashboards/) are copied verbatim; tests/chart checks that the copies are identical.
Run it after changing any of them:  python3 hack/sync-chart-files.py  (--check: exit 1 if a copy is stale).
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART_FILES = ROOT / "helm" / "fedtask" / "files"
# source folder -> (glob, folder inside the chart's files/)
SOURCES = {
    ROOT / "crds": ("*.yaml", "crds"),
    ROOT / "deploy" / "rbac": ("rules.yaml", "rbac"),
    ROOT / "dashboards": ("*.json", "dashboards"),
}


def planned_copies() -> list[tuple[Path, Path]]:
    return [(src, CHART_FILES / dest / src.name)
            for folder, (pattern, dest) in SOURCES.items() for src in sorted(folder.glob(pattern))]


def stale_files() -> list[str]:
    copies = planned_copies()
    problems = [f"{dst.relative_to(ROOT)}: differs from {src.relative_to(ROOT)}"
                for src, dst in copies if not dst.exists() or not filecmp.cmp(src, dst, shallow=False)]
    expected = {dst for _, dst in copies}
    problems += [f"{extra.relative_to(ROOT)}: has no source any more"
                 for _, (_, dest) in SOURCES.items() for extra in sorted((CHART_FILES / dest).glob("*"))
                 if extra not in expected]
    return problems


def sync() -> None:
    copies = planned_copies()
    expected = {dst for _, dst in copies}
    for _, (_, dest) in SOURCES.items():
        for extra in (CHART_FILES / dest).glob("*"):
            if extra not in expected:
                extra.unlink()
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale copies; exit 1 if there are any")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_files()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    sync()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
