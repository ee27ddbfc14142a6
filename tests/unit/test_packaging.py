"""pyproject.toml: lower bounds at the minor releases the tests run (constraints.txt), no dependency that nothing
uses, a `local` extra without kopf or the Kubernetes client, and typed packages that ship their py.typed markers."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
RUNTIME_EXTRAS = ("operator", "worker", "local")  # what users install; bench and test are for this repository
PACKAGES = {"fedtask_operator": ROOT / "operator" / "fedtask_operator",
            "fedtask_worker": ROOT / "worker_image" / "fedtask_worker"}
# Distribution -> the module our code imports (or, for scikit-learn, whose data file it reads).
IMPORT_NAMES = {"pyyaml": "yaml", "scikit-learn": "sklearn", "prometheus-client": "prometheus_client"}


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, separator, version = line.strip().partition("==")
        if separator:
            found[canonicalize_name(name)] = Version(version)
    return found


def requirements(*groups: str) -> list[Requirement]:
    """The third-party requirements of the base (group "") and the given extras, without fedtask's own extras."""
    lines = [line for group in groups for line in (PROJECT["dependencies"] if group == "" else EXTRAS[group])]
    return [Requirement(line) for line in lines if not line.startswith("fedtask[")]


def closure(extra: str) -> set[str]:
    """Every distribution `pip install fedtask[extra]` brings directly (fedtask's extras followed)."""
    names = {canonicalize_name(r.name) for r in requirements("")}
    todo, seen = [extra], set()
    while todo:
        group = todo.pop()
        if group in seen:
            continue
        seen.add(group)
        for line in EXTRAS[group]:
            if line.startswith("fedtask["):
                todo += line[len("fedtask["):-1].split(",")
            else:
                names.add(canonicalize_name(Requirement(line).name))
    return names


@pytest.mark.parametrize("requirement", requirements("", *RUNTIME_EXTRAS, "test"), ids=str)
def test_every_dependency_has_a_lower_bound_at_the_tested_minor_release(requirement):
    pinned = pins()[canonicalize_name(requirement.name)]
    (specifier,) = requirement.specifier
    bound = Version(specifier.version)

    assert specifier.operator == ">=", f"{requirement}: a lower bound (>=), the exact pin lives in constraints.txt"
    assert len(bound.release) >= 2 and pinned.release[:len(bound.release)] == bound.release, (
        f"{requirement}: the bound is not the tested release {pinned} (major.minor)")


def test_the_benchmark_peers_are_exact_pins_from_constraints():
    for requirement in requirements("bench"):
        (specifier,) = requirement.specifier
        assert (specifier.operator, Version(specifier.version)) == ("==", pins()[canonicalize_name(requirement.name)])


def test_every_runtime_dependency_is_used_by_the_code():
    source = "\n".join(path.read_text() for folder in PACKAGES.values() for path in folder.rglob("*.py"))
    for requirement in requirements("", *RUNTIME_EXTRAS):
        name = canonicalize_name(requirement.name)
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        used = rf"^\s*(import|from) {module}\b|find_spec\(\"{module}\"\)"
        assert re.search(used, source, re.M), f"{requirement.name}: nothing in the packages imports {module}"


def test_the_local_extra_needs_neither_kopf_nor_the_kubernetes_client():
    local = closure("local")

    assert not local & {"kopf", "kubernetes", "prometheus-client"}, local
    assert {"torch", "matplotlib", "pyyaml", "numpy"} <= local
    assert {"kopf", "kubernetes", "prometheus-client", "minio"} <= closure("operator")
    assert closure("all") >= closure("local") | closure("operator")


def test_project_metadata_names_its_urls_and_classifiers():
    assert set(PROJECT["urls"]) >= {"Homepage", "Documentation", "Source", "Issues"}
    assert "Typing :: Typed" in PROJECT["classifiers"]
    python = re.search(r">=(\d+\.\d+)", PROJECT["requires-python"]).group(1)
    assert f"Programming Language :: Python :: {python}" in PROJECT["classifiers"]


def test_both_packages_are_typed_and_the_wheel_ships_the_markers(tmp_path):
    source = tmp_path / "src"
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in PACKAGES.values():
        shutil.copytree(folder, source / folder.relative_to(ROOT), ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("fedtask-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for package, folder in PACKAGES.items():
        assert (folder / "py.typed").is_file()
        assert f"{package}/py.typed" in names
    assert "Project-URL: Source, https://github.com/fedtask/fedtask" in metadata
    assert "Requires-Dist: kopf>=1.45; extra == \"operator\"" in metadata
    assert not re.search(r"Requires-Dist: kopf.*extra == \"local\"", metadata)
