"""`fedtask run --set ... -o json`, then `fedtask get` and `fedtask describe` on its workdir (real processes)."""
from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedtask_operator.local.cli import ManifestError, apply_override, parse_override
from fedtask_operator.local.inspect import build_table, format_age
from tests.support.local_run import fedtask as run_fedtask

pytestmark = pytest.mark.e2e


def fedtask(*args: str) -> subprocess.CompletedProcess:
    return run_fedtask(*args, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("inspect")
    result = fedtask("run", "examples/digits-quick.yaml", "--workdir", str(workdir),
                     "--set", "spec.rounds.max=2", "--set", "metadata.name=tiny", "-o", "json")
    assert result.returncode == 0, result.stderr
    return workdir, json.loads(result.stdout)


def test_run_output_json_is_the_final_task_list_and_the_overrides_took_effect(finished_run):
    _, listing = finished_run
    assert listing["kind"] == "List" and [item["metadata"]["name"] for item in listing["items"]] == ["tiny"]
    task = listing["items"][0]
    assert task["spec"]["rounds"]["max"] == 2
    assert task["status"]["phase"] == "Succeeded"
    assert [record["round"] for record in task["status"]["history"]] == [1, 2]


def test_get_shows_the_printer_columns_of_the_crd(finished_run):
    workdir, listing = finished_run
    result = fedtask("get", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "ROUND", "STAGE", "ACCURACY", "AGE"]
    status = listing["items"][0]["status"]
    assert row.split()[:5] == ["tiny", "Succeeded", "2", status["stage"], f"{status['accuracy']:.4f}"]
    as_json = json.loads(fedtask("get", "tiny", "--workdir", str(workdir), "-o", "json").stdout)
    assert as_json["items"][0]["status"] == status


def test_describe_shows_conditions_rounds_and_events(finished_run):
    workdir, _ = finished_run
    result = fedtask("describe", "tiny", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Name:         tiny" in text and "Phase:      Succeeded" in text
    assert "Succeeded      True    MaxRoundsReached" in text
    events = text.split("Events:")[1]
    assert "RoundCompleted" in events and "TaskSucceeded" in events


def test_get_and_describe_name_what_is_missing(finished_run, tmp_path):
    workdir, _ = finished_run
    missing = fedtask("describe", "nope", "--workdir", str(workdir))
    assert missing.returncode == 1 and "no task named nope" in missing.stderr and not missing.stdout
    no_workdir = fedtask("get", "--workdir", str(tmp_path / "absent"))
    assert no_workdir.returncode == 1 and "no such workdir" in no_workdir.stderr


def test_a_bad_override_is_a_usage_error_naming_the_field(tmp_path):
    bad_value = fedtask("run", "examples/digits-quick.yaml", "--workdir", str(tmp_path), "--set", "spec.rounds.max=0")
    assert bad_value.returncode == 2
    assert bad_value.stderr.strip().endswith("spec.rounds.max: must be >= 1") and "Traceback" not in bad_value.stderr
    bad_form = fedtask("run", "examples/digits-quick.yaml", "--workdir", str(tmp_path), "--set", "spec.rounds.max")
    assert bad_form.returncode == 2 and "expected PATH=VALUE" in bad_form.stderr


@pytest.mark.parametrize("text, keys, value", [
    ("spec.rounds.max=5", ["spec", "rounds", "max"], 5),
    ("spec.suspend=true", ["spec", "suspend"], True),
    ("spec.model.args={hidden: 32}", ["spec", "model", "args"], {"hidden": 32}),
    ("metadata.name=a=b", ["metadata", "name"], "a=b"),
])
def test_parse_override_reads_the_value_as_yaml(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["=5", "spec..max=1", "status.phase=Succeeded", "spec.x=[unclosed"])
def test_parse_override_refuses_malformed_paths_and_values(text):
    with pytest.raises(ManifestError, match="--set"):
        parse_override(text)


def test_apply_override_creates_mappings_and_leaves_the_input_alone():
    document = {"spec": {"rounds": {"max": 3}, "model": "mlp"}}
    assert apply_override(document, ["spec", "rounds", "max"], 5)["spec"]["rounds"] == {"max": 5}
    assert apply_override(document, ["spec", "training", "epochs"], 2)["spec"]["training"] == {"epochs": 2}
    assert document == {"spec": {"rounds": {"max": 3}, "model": "mlp"}}
    with pytest.raises(ManifestError, match="spec.model is not a mapping"):
        apply_override(document, ["spec", "model", "name"], "cnn")


def test_table_and_age_formatting():
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    task = {"metadata": {"name": "t", "namespace": "ns", "creationTimestamp": "2026-12-03T09:00:00Z"},
            "status": {"phase": "Running", "round": 3, "stage": "Training", "accuracy": 0.91234}}
    assert build_table([task], now).splitlines()[1].split() == ["t", "Running", "3", "Training", "0.9123", "3h"]
    assert build_table([task], now, wide=True).splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [format_age(stamp, now) for stamp in ("2026-12-03T11:59:15Z", "2026-12-03T11:48:00Z",
                                                  "2026-12-01T11:00:00Z", None)] == ["45s", "12m", "2d", "<unknown>"]
