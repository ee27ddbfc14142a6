"""The local runtime's records in files: atomic JSON writes and UTC time stamps (and the API's MicroTime form)."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from fedtask_operator.core.conditions import format_micro_time
from fedtask_operator.local.files import read_json, utc_timestamp, write_json_atomic


def test_a_json_record_is_written_whole_in_a_new_folder_and_read_back(tmp_path):
    path = tmp_path / "task" / "pods" / "p.json"

    write_json_atomic(path, {"phase": "Pending", "n": [1, 2]})
    write_json_atomic(path, {"phase": "Running"})

    assert read_json(path) == {"phase": "Running"}
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temporary file left


def test_a_missing_or_broken_record_reads_as_none(tmp_path):
    (tmp_path / "broken.json").write_text('{"phase": ')
    assert read_json(tmp_path / "broken.json") is None
    assert read_json(tmp_path / "missing.json") is None


def test_utc_timestamps_have_the_kubernetes_form():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_timestamp())


def test_micro_times_are_utc_with_microseconds_whatever_the_zone_given():
    moment = datetime(2026, 11, 28, 5, 41, 3, 120, tzinfo=timezone(timedelta(hours=1)))
    assert format_micro_time(moment) == "2026-11-28T04:41:03.000120Z"
    assert format_micro_time(moment.astimezone(UTC).replace(tzinfo=None)) == "2026-11-28T04:41:03.000120Z"
