"""Issue 12: `fedtask run` confines host paths like the operator (its --allowed-host-path-prefix, default
/var/lib/fedtask): a task whose hostPath lies elsewhere fails at once with InvalidSpec naming the field."""
from __future__ import annotations

import pytest
import yaml

from tests.support.local_run import fedtask, read_task

pytestmark = pytest.mark.e2e


def host_path_task(tmp_path, path: str):
    manifest = {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "hp"},
                "spec": {"data": {"dataset": "digits", "source": "hostPath", "hostPath": path},
                         "devices": {"perRound": 1}, "rounds": {"max": 1}}}
    file = tmp_path / "hp.yaml"
    file.write_text(yaml.safe_dump(manifest))
    return file


def test_a_host_path_outside_the_prefixes_fails_the_task_naming_the_field(tmp_path):
    result = fedtask("run", str(host_path_task(tmp_path, "/etc")), "--workdir", str(tmp_path / "w"),
                     "--no-fork-server", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("spec.data.hostPath: '/etc' is outside the operator's allowed host path prefixes (/var/lib/fedtask)"
            in result.stdout + result.stderr)
    failed = [c for c in read_task(tmp_path / "w", "hp")["status"]["conditions"] if c["type"] == "Failed"]
    assert failed[0]["reason"] == "InvalidSpec" and not list((tmp_path / "w" / "pods").glob("*/*"))


def test_a_bad_prefix_is_a_usage_error(tmp_path):
    result = fedtask("run", str(host_path_task(tmp_path, "/etc")), "--workdir", str(tmp_path / "w"),
                     "--allowed-host-path-prefix", "srv/data", timeout=60)
    assert result.returncode == 2
    assert "--allowed-host-path-prefix 'srv/data': must be an absolute path" in result.stderr
    assert "Traceback" not in result.stderr
