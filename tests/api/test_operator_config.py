"""`fedtask operator` configuration (flags over environment) and the metric names, as dashboards and alerts use them."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedtask_operator.kube import metrics
from fedtask_operator.kube.cli import build_settings, parse_config

INTERNALS = Path(__file__).resolve().parents[2] / "docs" / "internals.md"


def test_flags_override_the_environment_a_chart_sets(monkeypatch):
    monkeypatch.setenv("FEDTASK_NAMESPACES", "team-a,team-b")
    monkeypatch.setenv("FEDTASK_S3_BUCKET", "from-env")
    monkeypatch.setenv("FEDTASK_DEFAULT_IMAGE", "registry.example/worker:1")
    monkeypatch.setenv("FEDTASK_S3_SECURE", "false")

    from_env = parse_config([])
    flagged = parse_config(["--store-bucket", "from-flag", "-n", "only", "--priority", "7"])

    assert from_env.namespaces == ("team-a", "team-b") and not from_env.clusterwide
    assert from_env.store_bucket == "from-env" and from_env.image == "registry.example/worker:1"
    assert from_env.store_secure is False
    assert flagged.namespaces == ("only",) and flagged.store_bucket == "from-flag" and flagged.priority == 7
    assert parse_config(["-A"]).clusterwide


def test_scheduling_settings_come_from_flags_over_the_environment(monkeypatch):
    monkeypatch.setenv("FEDTASK_COLLECTION_WINDOW_SECONDS", "5")
    monkeypatch.setenv("FEDTASK_FAIRNESS_WEIGHT", "0.5")

    from_env = parse_config([])
    flagged = parse_config(["--fairness-weight", "3", "--collection-window", "0"])

    assert (from_env.scheduling.collection_window, from_env.scheduling.fairness_weight) == (5.0, 0.5)
    assert (flagged.scheduling.collection_window, flagged.scheduling.fairness_weight) == (0.0, 3.0)
    for bad in (["--collection-window", "-1"], ["--fairness-weight", "nan"]):
        with pytest.raises(SystemExit):
            parse_config(bad)


def test_replicas_get_distinct_random_priorities_unless_one_is_given():
    priorities = {parse_config([]).priority for _ in range(20)}
    assert len(priorities) > 15 and all(priority > 0 for priority in priorities)


def test_kopf_settings_detect_stalled_watches_and_use_the_fedtask_prefix():
    settings = build_settings(parse_config(["--watch-timeout", "120", "--request-timeout", "20", "--standalone"]))
    assert settings.watching.server_timeout == 120
    assert settings.watching.client_timeout > settings.watching.server_timeout
    assert settings.networking.request_timeout == 20
    assert settings.persistence.progress_storage.prefix == "fedtask.io"
    assert settings.persistence.finalizer == "fedtask.io/cleanup-store"
    assert settings.posting.enabled and settings.peering.standalone


@pytest.mark.parametrize("args, message", [
    (["--metrics-port", "70000"], "--metrics-port must be between 0 and 65535"),
    (["--resync-seconds", "0"], "--resync-seconds must be positive"),
    (["--clean-pod-policy", "Sometimes"], "invalid choice: 'Sometimes'"),
])
def test_bad_flags_fail_with_one_line_naming_the_flag(args, message):
    result = subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "operator", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_bad_boolean_in_the_environment_is_named():
    result = subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "operator"], capture_output=True,
                            text=True, timeout=60, env={"FEDTASK_S3_SECURE": "maybe", "PATH": ""})
    assert result.returncode != 0 and "FEDTASK_S3_SECURE='maybe' must be true or false" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_metric_of_the_contract_is_defined_with_its_full_name():
    section = INTERNALS.read_text().split("## Metrics", 1)[1]
    contract = set(re.findall(r"`(fedtask_[a-z_]+)", section))
    source = (Path(metrics.__file__)).read_text()
    defined = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(fedtask_[a-z_]+)"', source))
    assert contract <= defined, contract - defined
    assert all(name.endswith("_total") for name in defined if f'Counter("{name}"' in source)
