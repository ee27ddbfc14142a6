"""Every validation rule of the aggregate stage: one clear line naming the object and the reason, never a traceback."""
import json
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.support.worker import random_model, run_stage, write_update


@pytest.fixture
def good(tmp_path):
    return [write_update(tmp_path / f"good{i}.safetensors", random_model(i), 10 + i) for i in range(3)]


def truncated(path):
    write_update(path, random_model(7))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-20])


def header_claims_too_much(path):
    open(path, "wb").write(struct.pack("<Q", 10_000) + b'{"a": 1}')


def non_json_header(path):
    open(path, "wb").write(struct.pack("<Q", 4) + b"\xff\xfe\x00\x01")


def torch_save_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}))


def with_nan(path):
    model = random_model(8)
    model["layer.weight"][2, 3] = np.nan
    write_update(path, model)


def with_inf(path):
    model = random_model(8)
    model["layer.bias"][0] = np.inf
    write_update(path, model)


BAD = {
    "empty": (lambda p: open(p, "wb").close(), "empty file"),
    "truncated": (truncated, "truncated"),
    "too-short": (lambda p: open(p, "wb").write(b"\x01\x02"), "truncated"),
    "header-claims-more": (header_claims_too_much, "header claims 10000 bytes"),
    "not-json": (non_json_header, "not valid JSON"),
    "pickle": (lambda p: open(p, "wb").write(pickle.dumps({"w": [1.0]})), "pickle"),
    "torch-save": (torch_save_zip, "zip archive"),
    "missing-tensor": (lambda p: write_update(p, {"layer.weight": random_model(1)["layer.weight"]}),
                       "missing tensors 'layer.bias'"),
    "extra-tensor": (lambda p: write_update(p, {**random_model(1), "extra": np.zeros(2, np.float32)}),
                     "unexpected tensors 'extra'"),
    "shape": (lambda p: write_update(p, random_model(1, {"layer.weight": (5, 6), "layer.bias": (6,)})),
              "shape [5, 6], expected [6, 5]"),
    "dtype": (lambda p: write_update(p, {k: v.astype(np.float64) for k, v in random_model(1).items()}),
              "dtype F64, expected F32"),
    "nan": (with_nan, "'layer.weight' contains NaN or Inf"),
    "inf": (with_inf, "'layer.bias' contains NaN or Inf"),
    "no-num-samples": (lambda p: write_update(p, random_model(1), num_samples=None), "num_samples is missing"),
    "negative-samples": (lambda p: write_update(p, random_model(1), num_samples=-3), "not a non-negative integer"),
    "fraction-samples": (lambda p: write_update(p, random_model(1), num_samples="2.5"), "not a non-negative integer"),
    "other-round": (lambda p: write_update(p, random_model(1), round=4), "from round 4, expected round 5"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_update_is_skipped_with_a_reason(tmp_path, good, capsys, kind):
    make, reason = BAD[kind]
    bad = tmp_path / f"bad-{kind}.safetensors"
    make(str(bad))
    output = tmp_path / "out.safetensors"
    code, result, err = run_stage(["aggregate", "--output", output, "--on-invalid", "skip", "--round", 5,
                                   *good, bad], capsys)
    assert code == 0, err
    assert result["updates"] == 3
    assert [item["uri"] for item in result["rejected"]] == [str(bad)]
    assert reason in result["rejected"][0]["reason"]
    assert output.exists()


@pytest.mark.parametrize("kind", ["truncated", "nan", "shape", "pickle"])
def test_bad_update_fails_the_stage_with_one_line(tmp_path, good, capsys, kind):
    make, reason = BAD[kind]
    bad = tmp_path / f"bad-{kind}.safetensors"
    make(str(bad))
    result_file = tmp_path / "result.json"
    code, result, err = run_stage(["aggregate", "--output", tmp_path / "out.safetensors", "--result-file",
                                   result_file, *good, bad], capsys)
    assert code == 2 and result is None
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and reason in err
    assert "Traceback" not in err
    assert json.loads(result_file.read_text())["exit_code"] == 2
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_header_whose_length_starts_like_a_pickle_is_still_safetensors(tmp_path, protocol):
    """A header of 0x80 + 256 * protocol bytes starts 0x80 <protocol>, the pickle PROTO opcode; it is not a pickle."""
    from fedtask_worker.tensors import load_arrays, save_arrays

    length = 0x80 + 256 * protocol
    metadata = {"pad": "", "fedtask_digest_algorithm": "sha256", "fedtask_digest": "0" * 64}  # save_arrays adds both
    base = len(json.dumps({"__metadata__": metadata, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                          separators=(",", ":")))
    path = str(tmp_path / "m.safetensors")
    save_arrays(path, {"w": np.array([1.0, 2.0], np.float32)}, {"pad": "x" * (length - base)})
    assert open(path, "rb").read(3) == bytes([0x80, protocol, 0])
    arrays, metadata = load_arrays(path)
    assert arrays["w"].tolist() == [1.0, 2.0] and len(metadata["pad"]) == length - base
    pickled = tmp_path / "p.safetensors"
    pickled.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))
    with pytest.raises(Exception, match="is a Python pickle"):
        load_arrays(str(pickled))


def test_reference_layout_is_the_bases_when_given(tmp_path, good, capsys):
    base = write_update(tmp_path / "base.safetensors", random_model(0, {"layer.weight": (5, 6),
                                                                        "layer.bias": (6,)}))
    code, result, err = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", "--base", base,
                                   "--on-invalid", "skip", *good], capsys)
    assert code == 2 and "no valid updates" in err and "shape [6, 5], expected [5, 6]" in err


def test_majority_layout_wins_without_a_base(tmp_path, good, capsys):
    odd = write_update(tmp_path / "a-odd.safetensors", random_model(0, {"x": (2,)}))
    code, result, _ = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", "--on-invalid", "skip",
                                 odd, *good], capsys)
    assert code == 0 and result["updates"] == 3 and result["rejected"][0]["uri"] == odd


def test_oversized_update_is_rejected(tmp_path, good, capsys):
    big = write_update(tmp_path / "big.safetensors", random_model(0), 5, note="x" * 5000)
    limit = max(len(open(path, "rb").read()) for path in good) + 100
    code, result, err = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", "--on-invalid", "skip",
                                   "--max-update-bytes", limit, *good, big], capsys)
    assert code == 0, err
    assert result["updates"] == 3
    assert [item["uri"] for item in result["rejected"]] == [big]
    assert f"over the limit of {limit} bytes" in result["rejected"][0]["reason"]


def test_zero_total_samples_fails_cleanly(tmp_path, capsys):
    updates = [write_update(tmp_path / f"z{i}.safetensors", random_model(i), 0) for i in range(2)]
    code, _, err = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", *updates], capsys)
    assert code == 2 and "total num_samples" in err and not (tmp_path / "o.safetensors").exists()


class _Exploit:
    """If this pickle were ever loaded, it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_payload_is_never_loaded(tmp_path, good):
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.safetensors"
    payload.write_bytes(pickle.dumps(_Exploit(str(marker))))
    zipped = tmp_path / "evil-zip.safetensors"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Exploit(str(marker))))
    base = tmp_path / "evil-base.safetensors"
    base.write_bytes(pickle.dumps(_Exploit(str(marker))))
    process = subprocess.run([sys.executable, "-m", "fedtask_worker", "aggregate", "--output",
                              str(tmp_path / "o.safetensors"), "--on-invalid", "skip", *good, str(payload),
                              str(zipped)], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert len(json.loads(process.stdout)["rejected"]) == 2
    for stage in (["publish", "--input", str(base), "--output", str(tmp_path / "p.safetensors")],
                  ["aggregate", "--output", str(tmp_path / "o2.safetensors"), "--base", str(base), *good]):
        process = subprocess.run([sys.executable, "-m", "fedtask_worker", *stage], capture_output=True, text=True,
                                 timeout=120)
        assert process.returncode == 2 and "pickle" in process.stderr and "Traceback" not in process.stderr
    assert not marker.exists()


def test_rejected_list_fits_the_termination_message(tmp_path, good, capsys):
    bad = []
    for index in range(200):
        path = tmp_path / (f"bad-update-with-a-rather-long-name-{index:04d}" + "x" * 60 + ".safetensors")
        path.write_bytes(b"")
        bad.append(path)
    result_file = tmp_path / "termination-log"
    code, result, _ = run_stage(["aggregate", "--output", tmp_path / "o.safetensors", "--on-invalid", "skip",
                                 "--result-file", result_file, *good, *bad], capsys)
    assert code == 0
    text = result_file.read_bytes()
    assert len(text) <= 4096
    stored = json.loads(text)
    assert stored["rejected_total"] == 200
    assert stored["rejected_omitted"] == 200 - len(stored["rejected"]) > 0
    assert stored["updates"] == 3
