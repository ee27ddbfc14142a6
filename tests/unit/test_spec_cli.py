"""`fedtask validate`: one line per problem with file, line and field path; exit 2 on any problem, 0 when valid."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from fedtask_operator.cli.validate import main

GOOD = """\
apiVersion: fedtask.io/v1alpha1
kind: FederatedTask
metadata:
  name: mnist
spec:
  devices: {perRound: 2, count: 4}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_valid_manifest_exits_0(tmp_path, capsys):
    path = write(tmp_path, "good.yaml", GOOD)
    assert run(capsys, path) == (0, [f"{path}:1: FederatedTask default/mnist: valid"], [])


def test_every_problem_one_line_with_file_line_and_field_path(tmp_path, capsys):
    path = write(tmp_path, "many.yaml", GOOD + """\
---
apiVersion: fedtask.io/v1alpha1
kind: FederatedTask
metadata: {name: bad}
spec:
  devices: {perRound: 0, perRond: 1}
  rounds: {max: 0}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
---
""")
    code, out, err = run(capsys, path)
    assert code == 2
    assert out == [f"{path}:1: FederatedTask default/mnist: valid"]
    assert err == [
        f"{path}:8: spec.devices.perRond: unknown field",
        f"{path}:8: spec.devices.perRound: must be >= 1",
        f"{path}:8: spec.rounds.max: must be >= 1",
        f"{path}:15: apiVersion: must be fedtask.io/v1alpha1, not 'v1'",
        f"{path}:15: kind: must be FederatedTask, not 'Pod'",
    ]


def test_broken_yaml_missing_file_empty_file_duplicates(tmp_path, capsys):
    broken = write(tmp_path, "broken.yaml", "spec:\n  devices: [1, 2\n")
    empty = write(tmp_path, "empty.yaml", "# nothing\n")
    dup_key = write(tmp_path, "dupkey.yaml", GOOD + "  rounds: {max: 2}\n  rounds: {max: 3}\n")
    dup_name = write(tmp_path, "dupname.yaml", GOOD + "---\n" + GOOD)
    missing = str(tmp_path / "missing.yaml")

    code, out, err = run(capsys, "-q", broken, empty, dup_key, dup_name, missing)

    assert code == 2 and out == []
    assert err == [
        f"{broken}: invalid YAML: line 3 column 1: expected ',' or ']', but got '<stream end>'",
        f"{empty}: no FederatedTask in the file",
        f"{dup_key}: invalid YAML: line 8 column 3: duplicate key 'rounds'",
        f"{dup_name}:8: metadata.name: default/mnist is already defined at {dup_name}:1",
        f"{missing}: cannot read: No such file or directory",
    ]


def test_show_defaults_prints_the_task_as_stored(tmp_path, capsys):
    code, out, err = run(capsys, "--show-defaults", write(tmp_path, "good.yaml", GOOD))
    (shown,) = yaml.safe_load_all("\n".join(out))
    assert code == 0 and err == []
    assert "minReturned" not in shown["spec"]["devices"]  # no default: the quorum is perRound
    assert shown["spec"]["aggregation"]["onInvalid"] == "skip"
    assert shown["spec"]["devices"]["perRound"] == 2 and shown["spec"]["rounds"]["max"] == 20


def test_the_fedtask_command_end_to_end(tmp_path):
    bad = write(tmp_path, "bad.yaml", GOOD.replace("perRound: 2", "perRound: 5"))
    result = subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "validate", bad],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"{bad}:1: spec.devices.perRound: must be <= count\n"
    assert "Traceback" not in result.stdout + result.stderr


def test_every_example_task_is_valid():
    root = Path(__file__).resolve().parents[2] / "examples"
    tasks = [str(p) for p in sorted(root.glob("*.yaml")) if "kind: FederatedTask" in p.read_text()]
    assert tasks, "examples/ holds FederatedTask manifests"
    assert main(["-q", *tasks]) == 0


def test_module_callable_references_are_imported_from_the_manifests_folder(tmp_path, capsys):
    package = f"usercode_{tmp_path.name.replace('-', '_')}"  # a fresh module name: nothing cached in sys.modules
    (tmp_path / f"{package}.py").write_text("def build(**kw):\n    return None\nNOT_CALLABLE = 3\n")
    (tmp_path / f"{package}_broken.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    spec = ("  model: {name: 'PKG:build'}\n  data: {dataset: 'PKG:missing'}\n"
            "  training: {step: 'PKG:NOT_CALLABLE'}\n  evaluation: {function: 'PKG_broken:score'}\n")
    path = write(tmp_path, "task.yaml", GOOD + spec.replace("PKG", package))

    code, out, err = run(capsys, path)

    assert code == 2 and out == []
    assert err == [f"{path}:1: spec.data.dataset: module {package!r} ({tmp_path / package}.py) has no 'missing'",
                   f"{path}:1: spec.training.step: {package}:NOT_CALLABLE is a int, not a callable",
                   f"{path}:1: spec.evaluation.function: importing '{package}_broken' ({tmp_path / package}_broken.py)"
                   " failed: RuntimeError: needs a GPU driver"]
    assert run(capsys, "--no-import", path)[0] == 0


def test_references_to_modules_not_here_are_noted_not_refused(tmp_path, capsys):
    path = write(tmp_path, "task.yaml", GOOD + "  model: {name: 'not_installed_pkg.models:build'}\n")

    code, out, err = run(capsys, path)

    assert code == 0 and err == []
    assert out == [f"{path}:1: spec.model.name: not_installed_pkg.models:build not checked: no module "
                   f"'not_installed_pkg.models' here (looked in {tmp_path} and the installed packages); the worker "
                   "image must provide it",
                   f"{path}:1: FederatedTask default/mnist: valid"]


def test_standard_input_and_non_mapping_documents(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fedtask_operator.cli.validate", "-"], capture_output=True,
                            text=True, input=GOOD + "---\n- just\n- a list\n", timeout=60)
    assert result.returncode == 2
    assert result.stdout == "-:1: FederatedTask default/mnist: valid\n"
    assert result.stderr == "-:8: <document>: must be an object, not list\n"


GPU_CONFLICT = GOOD.replace("  devices: {perRound: 2, count: 4}\n", """\
  devices:
    perRound: 2
    count: 4
    resources:
      requests: {nvidia.com/gpu: 1, cpu: 1}
      limits: {nvidia.com/gpu: 2, cpu: 2}
""")


def test_validate_names_the_extended_resource_whose_limit_differs(tmp_path, capsys):
    path = write(tmp_path, "gpu.yaml", GPU_CONFLICT)
    code, out, err = run(capsys, path)
    assert code == 2 and out == []
    [line] = err
    assert line.startswith(f"{path}:1: spec.devices.resources.limits: the limit of nvidia.com/gpu differs from its "
                           "request: an extended resource"), line


def test_run_refuses_the_manifest_naming_the_extended_resource(tmp_path, capsys):
    from fedtask_operator.local.cli import main as run_main

    path = write(tmp_path, "gpu.yaml", GPU_CONFLICT)
    code = run_main([path, "--workdir", str(tmp_path / "work")])
    _, err = capsys.readouterr()
    assert code == 2
    assert f"{path}: spec.devices.resources.limits: the limit of nvidia.com/gpu differs from its request" in err, err
    assert not (tmp_path / "work").exists()
