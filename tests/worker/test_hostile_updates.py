"""Issue 12 (2-4): one hostile update is rejected for itself, with a reason, and the round goes on.

Every test runs the real aggregate stage on real files (or the test S3 server) with the previous global model as
--base, as the planner runs it.
"""
import json
import os

import numpy as np
import pytest

from fedtask_worker import store
from fedtask_worker.tensors import load_arrays
from tests.support import hostile
from tests.support.worker import random_model, run_stage, write_update

HOSTILE = {
    "huge-shape-dims": (hostile.huge_dims, "header"),  # 2**64 has 20 digits: not a header's integer
    "shape-dims-2**62": (lambda p: hostile.huge_dims(p, 2 ** 62), "shape"),
    "nested-header": (lambda p: hostile.nested_header(p, 20_000), "header"),
    "nested-metadata": (lambda p: hostile.nested_metadata(p, 20_000), "header"),
    "deep-nesting-over-the-bound": (hostile.nested_header, "over the limit"),
    "list-dtype": (hostile.unhashable_dtype, "header"),
    "integer-list-dtype": (lambda p: hostile.unhashable_dtype(p, [1]), "dtype"),
    "superscript-num-samples": (lambda p: hostile.bad_num_samples(p, "²"), "num_samples"),
    "arabic-digit-num-samples": (lambda p: hostile.bad_num_samples(p, "٣"), "num_samples"),
    "5000-digit-num-samples": (lambda p: hostile.bad_num_samples(p, "7" * 5000), "num_samples"),
    "spaced-num-samples": (lambda p: hostile.bad_num_samples(p, " 12 "), "num_samples"),
    "missing": (hostile.missing, "not uploaded"),
    "oversized": (hostile.oversized, "over the limit"),
    "huge-header": (hostile.huge_header, "over the limit"),  # see the S3 tests for the header-length bound
    "bool-offsets": (lambda p: hostile.raw_safetensors(p, *hostile.valid_header(**{
        "layer.bias": {"dtype": "F32", "shape": [0], "data_offsets": [False, False]}})), "header"),
}


@pytest.fixture
def round_files(tmp_path):
    base = write_update(tmp_path / "global.safetensors", random_model(100), 0)
    good = [write_update(tmp_path / f"d00{i}.safetensors", random_model(i), 10 + i) for i in range(3)]
    return base, good


def aggregate(tmp_path, capsys, base, updates, *flags, output="out.safetensors"):
    code, result, err = run_stage(["aggregate", "--output", tmp_path / output, "--base", base,
                                   "--on-invalid", "skip", *flags, *updates], capsys)
    return code, result, err


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_one_hostile_update_is_rejected_and_the_round_goes_on(tmp_path, capsys, round_files, kind):
    base, good = round_files
    make, reason = HOSTILE[kind]
    bad = make(str(tmp_path / "d009.safetensors"))
    code, result, err = aggregate(tmp_path, capsys, base, good + [bad])
    assert code == 0, err
    assert [item["uri"] for item in result["rejected"]] == [bad]
    assert reason in result["rejected"][0]["reason"] and len(result["rejected"][0]["reason"]) <= 400
    assert result["updates"] == 3
    code, _, err = aggregate(tmp_path, capsys, base, good, output="valid-only.safetensors")
    assert code == 0, err
    ours, _ = load_arrays(str(tmp_path / "out.safetensors"))
    expected, _ = load_arrays(str(tmp_path / "valid-only.safetensors"))
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name])


def test_on_invalid_fail_still_fails_with_one_line(tmp_path, capsys, round_files):
    base, good = round_files
    bad = hostile.nested_header(str(tmp_path / "d009.safetensors"))
    code, result, err = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", "--base", base,
                                   "--on-invalid", "fail", *good, bad], capsys)
    assert code == 2 and result is None and len(err.strip().splitlines()) == 1 and bad in err


def test_every_update_missing_is_the_all_rejected_failure(tmp_path, capsys, round_files):
    base, _ = round_files
    missing = [str(tmp_path / f"d00{i}.absent") for i in range(2)]
    code, _, err = aggregate(tmp_path, capsys, base, missing)
    assert code == 2 and "no valid updates" in err and "not uploaded" in err


def peak_rss(argv) -> int:
    """The aggregate process's own peak RSS (VmHWM; wait4's ru_maxrss would include this test process's RSS)."""
    from benchmarks.bench_hostile_aggregate import run_worker

    code, _, peak, _, err = run_worker([str(item) for item in argv])
    assert code == 0, err
    return peak


def test_a_90_mb_header_is_never_read_into_memory(tmp_path, round_files):
    base, good = round_files
    bad = hostile.huge_metadata(str(tmp_path / "d009.safetensors"), 90 * 1024 * 1024)
    common = ["aggregate", "--base", base, "--on-invalid", "skip"]
    without = peak_rss(common + ["--output", tmp_path / "a.safetensors", *good])
    with_bad = peak_rss(common + ["--output", tmp_path / "b.safetensors", *good, bad])
    assert with_bad - without < 20 * 1024 * 1024, (without, with_bad)


# ---------------------------------------------------------------------------------------------------------------
# S3: missing uploads and sizes checked before the download


def put(path, uri) -> str:
    store.write_file(uri, path)
    return uri


def test_s3_missing_and_hostile_updates_are_rejected(s3_server, tmp_path, capsys, round_files):
    base, good = round_files
    prefix = "s3://fedtask/ns/task/uid/round-0001/updates"
    base_uri = put(base, "s3://fedtask/ns/task/uid/round-0000/global.safetensors")
    uris = [put(path, f"{prefix}/d00{i}.safetensors") for i, path in enumerate(good)]
    bad = {
        f"{prefix}/d005.safetensors": None,  # never uploaded
        f"{prefix}/d006.safetensors": hostile.oversized(str(tmp_path / "o.safetensors")),
        f"{prefix}/d007.safetensors": hostile.huge_header(str(tmp_path / "h.safetensors"), 50 * 1024 * 1024),
        f"{prefix}/d008.safetensors": hostile.nested_header(str(tmp_path / "n.safetensors")),
        f"{prefix}/d009.safetensors": hostile.empty(str(tmp_path / "e.safetensors")),
    }
    for uri, path in bad.items():
        if path:
            put(path, uri)
    code, result, err = run_stage(["aggregate", "--output", "s3://fedtask/agg.safetensors", "--base", base_uri,
                                   "--on-invalid", "skip", *uris, *bad], capsys)
    assert code == 0, err
    reasons = {item["uri"]: item["reason"] for item in result["rejected"]}
    assert sorted(reasons) == sorted(bad)
    assert "not uploaded" in reasons[f"{prefix}/d005.safetensors"]
    assert "over the limit" in reasons[f"{prefix}/d006.safetensors"]
    assert "over the limit" in reasons[f"{prefix}/d007.safetensors"]
    assert "empty" in reasons[f"{prefix}/d009.safetensors"]
    assert result["updates"] == 3


def test_s3_update_over_the_bounds_is_not_downloaded(s3_server, tmp_path):
    from fedtask_worker.stages.aggregate import fetch_update, update_limits
    from fedtask_worker.tensors import InvalidUpdate, read_layout

    shapes = {"w": (512, 512)}
    base = write_update(tmp_path / "global.safetensors", random_model(0, shapes), 0)
    limits = update_limits(read_layout(base), None)
    assert limits.max_bytes == os.path.getsize(base) + 64 * 1024
    for name, path, reason in (
            ("big", hostile.oversized(str(tmp_path / "o.safetensors"), 2_000_000), "over the limit"),
            ("header", hostile.huge_header(str(tmp_path / "h.safetensors"), 600_000), "header claims 600000 bytes"),
            ("pickle", hostile.pickle_bytes(str(tmp_path / "p.safetensors")), "pickle"),
            ("empty", hostile.empty(str(tmp_path / "e.safetensors")), "empty")):
        uri = put(path, f"s3://fedtask/r/{name}.safetensors")
        target = tmp_path / f"{name}.download"
        with pytest.raises(InvalidUpdate, match=reason):
            fetch_update(uri, str(target), limits)
        assert not target.exists()
    with pytest.raises(InvalidUpdate, match="not uploaded"):
        fetch_update("s3://fedtask/r/absent.safetensors", str(tmp_path / "absent"), limits)
    good = put(write_update(tmp_path / "g.safetensors", random_model(1, shapes), 4), "s3://fedtask/r/g.safetensors")
    fetch_update(good, str(tmp_path / "good.download"), limits)
    assert (tmp_path / "good.download").read_bytes() == (tmp_path / "g.safetensors").read_bytes()


def test_result_names_every_rejection(tmp_path, capsys, round_files):
    base, good = round_files
    bad = [hostile.huge_dims(str(tmp_path / "d007.safetensors")), hostile.missing(str(tmp_path / "d008.x"))]
    result_file = tmp_path / "termination-log"
    code, _, _ = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", "--base", base, "--on-invalid",
                            "skip", "--result-file", result_file, *good, *bad], capsys)
    stored = json.loads(result_file.read_text())
    assert code == 0 and sorted(item["uri"] for item in stored["rejected"]) == sorted(bad)
