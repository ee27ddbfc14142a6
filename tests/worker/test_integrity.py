"""The integrity digest of every safetensors file fedtask writes (issue 13: "a stored object corrupted: detected,
rejected with an event, and the round goes on").

save_arrays records the file's sha256 in its metadata; readers check it before a tensor is used. Before the digest, a
bit flip that kept the values finite was aggregated silently: these tests flip every single bit of a small update and
require each flip to be refused.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fedtask_worker.combine import aggregate_files
from fedtask_worker.errors import BadInput
from fedtask_worker.tensors import (
    DIGEST_ALGORITHM_KEY,
    DIGEST_KEY,
    InvalidUpdate,
    check_integrity,
    load_arrays,
    read_layout,
    save_arrays,
)
from tests.support.hostile import raw_safetensors
from tests.support.worker import random_model, run_stage, write_update


def flipped(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def read_whole(path: str):
    """What a reader gets: arrays and metadata (load_arrays), and the block reader's check (check_integrity)."""
    arrays, metadata = load_arrays(path)
    check_integrity(path, read_layout(path), path)
    return arrays, metadata


def data_start(path: str) -> int:
    return 8 + read_layout(path).header_size


def test_an_intact_update_is_read_back_exactly_and_its_digest_keys_are_not_in_its_metadata(tmp_path):
    model = random_model(1)
    path = write_update(tmp_path / "d000.safetensors", model, 17, round=3)

    arrays, metadata = read_whole(path)

    assert {name: value.tolist() for name, value in arrays.items()} == {n: v.tolist() for n, v in model.items()}
    assert metadata == {"num_samples": "17", "round": "3"}
    header = json.loads(open(path, "rb").read()[8:data_start(path)])
    assert header["__metadata__"][DIGEST_ALGORITHM_KEY] == "sha256" and len(header["__metadata__"][DIGEST_KEY]) == 64
    assert check_integrity(path, read_layout(path)) is True


def test_one_flipped_bit_in_the_data_is_a_digest_mismatch_even_when_the_value_stays_finite(tmp_path):
    path = write_update(tmp_path / "d001.safetensors", random_model(2))
    original = open(path, "rb").read()
    start = data_start(path)
    corrupt = flipped(original, start * 8)  # the lowest mantissa bit of the first float: finite, barely changed
    value = np.frombuffer(corrupt[start:start + 4], np.float32)[0]
    assert np.isfinite(value) and value != np.frombuffer(original[start:start + 4], np.float32)[0]
    open(path, "wb").write(corrupt)

    with pytest.raises(InvalidUpdate, match=r"d001.safetensors: digest mismatch: the file is not what its writer "
                                            r"recorded \(sha256 [0-9a-f]{12}\.\.\., read [0-9a-f]{12}\.\.\.\)"):
        load_arrays(path)
    with pytest.raises(InvalidUpdate, match="digest mismatch"):
        check_integrity(path, read_layout(path), path)


def test_every_single_bit_flip_anywhere_in_an_update_is_refused(tmp_path):
    """Flips of the length prefix, of every header bit (keys, values, the digest itself, padding) and of the data."""
    path = str(tmp_path / "d002.safetensors")
    write_update(path, random_model(3), 60, round=1, stage="train", device=2)
    original = open(path, "rb").read()
    start = data_start(path)
    accepted, mismatches = [], 0
    # every bit up to the first 8 data bytes and of the last 8; one bit of each data byte in between
    bits = [*range((start + 8) * 8), *range((start + 8) * 8, (len(original) - 8) * 8, 9),
            *range((len(original) - 8) * 8, len(original) * 8)]
    for bit in bits:
        open(path, "wb").write(flipped(original, bit))
        try:
            read_whole(path)
        except InvalidUpdate as error:
            mismatches += "digest mismatch" in str(error)
            if bit >= start * 8:
                assert "digest mismatch" in str(error), (bit, str(error))
        else:
            accepted.append(bit)
    assert accepted == [], f"{len(accepted)} of {len(bits)} flips accepted, first at byte {accepted[0] // 8}"
    assert mismatches > len([bit for bit in bits if bit >= start * 8])  # every data flip, and header flips too


def test_a_file_without_a_digest_is_read_unverified_as_before(tmp_path):
    """A file another tool wrote (a user's initial model, safetensors.numpy.save_file) or an older fedtask: no
    digest keys. It is read as before: its structure checked, its bytes not."""
    model = random_model(4)
    data = model["layer.bias"].tobytes() + model["layer.weight"].tobytes()
    header = {"__metadata__": {"num_samples": "10"},
              "layer.bias": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
              "layer.weight": {"dtype": "F32", "shape": [6, 5], "data_offsets": [24, 144]}}
    path = raw_safetensors(tmp_path / "initial.safetensors", header, data)

    arrays, metadata = load_arrays(path)

    assert arrays["layer.weight"].tolist() == model["layer.weight"].tolist() and metadata == {"num_samples": "10"}
    assert read_layout(path).integrity is None and check_integrity(path, read_layout(path)) is False
    save_arrays(path, arrays, metadata)  # written again by fedtask: now it carries one
    assert check_integrity(path, read_layout(path)) is True


@pytest.mark.parametrize("keep, reason", [
    (DIGEST_KEY, "has fedtask_digest but no fedtask_digest_algorithm"),
    (DIGEST_ALGORITHM_KEY, "has fedtask_digest_algorithm but no fedtask_digest"),
])
def test_a_file_with_only_one_of_the_two_digest_keys_is_refused(tmp_path, keep, reason):
    """The keys guard each other: a flip that renames one (so the file seems to have no digest) is still caught."""
    path = write_update(tmp_path / "d003.safetensors", random_model(5))
    raw = open(path, "rb").read()
    start = data_start(path)
    header = json.loads(raw[8:start])
    for key in (DIGEST_KEY, DIGEST_ALGORITHM_KEY):
        if key != keep:
            header["__metadata__"][key.replace("digest", "digesu")] = header["__metadata__"].pop(key)
    raw_safetensors(path, header, raw[start:])

    with pytest.raises(InvalidUpdate, match=f"digest mismatch: metadata {reason}"):
        load_arrays(path)


def test_metadata_read_back_with_a_stale_digest_or_holding_the_digest_text_is_written_with_a_fresh_one(tmp_path):
    path = str(tmp_path / "m.safetensors")
    tricky = '"fedtask_digest":"' + "1" * 64 + '"'
    save_arrays(path, random_model(6), {"note": tricky, DIGEST_KEY: "f" * 64, DIGEST_ALGORITHM_KEY: "md5"})

    arrays, metadata = load_arrays(path)

    assert metadata == {"note": tricky}
    assert check_integrity(path, read_layout(path)) is True


@pytest.mark.parametrize("shapes", [None, {"layer.weight": (1024, 1536), "layer.bias": (1024,)}],
                         ids=["small: checked one by one", "18 MB: checked in parallel"])
def test_a_flipped_update_is_rejected_and_the_round_goes_on_with_the_others(tmp_path, shapes):
    paths = {f"s3://b/t/updates/d00{i}.safetensors": write_update(tmp_path / f"d00{i}.safetensors",
                                                                   random_model(i, shapes), 10 * (i + 1))
             for i in range(3)}
    corrupt = "s3://b/t/updates/d001.safetensors"
    raw = open(paths[corrupt], "rb").read()
    open(paths[corrupt], "wb").write(flipped(raw, (len(raw) - 7) * 8 + 2))

    outcome = aggregate_files(paths, on_invalid="skip")

    assert [(item.uri, item.reason.split(":")[0]) for item in outcome.rejected] == [(corrupt, "digest mismatch")]
    assert outcome.accepted == ["s3://b/t/updates/d000.safetensors", "s3://b/t/updates/d002.safetensors"]
    expected = (random_model(0, shapes)["layer.weight"] * 10 + random_model(2, shapes)["layer.weight"] * 30) / 40
    np.testing.assert_allclose(outcome.arrays["layer.weight"], expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(InvalidUpdate, match="d001.safetensors: digest mismatch"):
        aggregate_files(paths, on_invalid="fail")


def test_a_corrupt_global_model_fails_the_stage_with_a_clear_reason_not_a_traceback(tmp_path, capsys):
    """publish (and train, adjust: load_arrays) refuse a global model whose digest does not match: exit 2, one
    line, nothing published, nothing trained on it."""
    model = tmp_path / "model.safetensors"
    save_arrays(str(model), random_model(7), {"round": "5"})
    raw = model.read_bytes()
    model.write_bytes(flipped(raw, (len(raw) - 1) * 8))
    target = tmp_path / "published.safetensors"

    code, _, err = run_stage(["publish", "--input", model, "--output", target], capsys)

    assert code == 2 and "digest mismatch" in err and str(model) in err and "Traceback" not in err
    assert not target.exists()
    with pytest.raises(BadInput, match="digest mismatch"):
        from fedtask_worker.stages.common import read_model
        read_model(str(model))
    base = {"s3://b/u.safetensors": write_update(tmp_path / "u.safetensors", random_model(8))}
    with pytest.raises(BadInput, match="model.safetensors: digest mismatch"):
        aggregate_files(base, base=(str(model), str(model)), on_invalid="skip")
