"""Property (issue 12): `aggregate --on-invalid skip` never exits non-zero because of one hostile update among valid
ones, rejects exactly that update, and writes exactly what it writes for the valid ones alone.

Hypothesis draws the hostile kind and its parameters, the strategy, the number of valid updates and where the hostile
one sorts among them; every example runs the real stage (cli.main) twice on real files: with the hostile update and
without it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import struct
import tempfile
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtask_worker import cli, store
from tests.support import hostile
from tests.support.worker import random_model, write_update

STRATEGIES = ["fedavg", "fedavgm", "fedadam", "median", "trimmed-mean", "krum"]
PLAIN_COUNT = re.compile(r"[0-9]{1,18}")
DTYPES = {"F64": 8, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _valid_bytes(seed: int) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = write_update(os.path.join(folder, "u"), random_model(seed), 7)
        return open(path, "rb").read()


@st.composite
def hostile_updates(draw):
    """(kind, writer(path) -> None): one hostile update of every kind issue 12 lists, parameters drawn."""
    kind = draw(st.sampled_from([
        "truncated", "bad-header-length", "huge-header-length", "nested-header", "non-json-header", "wrong-dtype",
        "wrong-shape", "huge-shape-dims", "non-finite", "bad-num-samples", "missing", "over-the-bound", "pickle",
        "foreign-json",
    ]))
    if kind == "truncated":
        data = _valid_bytes(draw(st.integers(0, 50)))
        cut = draw(st.integers(0, len(data) - 1))
        return kind, lambda path: open(path, "wb").write(data[:cut])
    if kind == "bad-header-length":
        data = _valid_bytes(1)
        true_length = struct.unpack("<Q", data[:8])[0]
        claimed = draw(st.integers(0, 2 ** 64 - 1).filter(lambda n: n != true_length))
        return kind, lambda path: open(path, "wb").write(struct.pack("<Q", claimed) + data[8:])
    if kind == "huge-header-length":
        size = draw(st.integers(70 * 1024, 8 * 1024 * 1024))
        return kind, lambda path: hostile.huge_header(path, size)
    if kind == "nested-header":
        depth = draw(st.integers(4, 30_000))
        opener = draw(st.sampled_from([b"[", b'{"a":', b'{"a":{"b":[']))
        closer = {b"[": b"]", b'{"a":': b"}", b'{"a":{"b":[': b"]}}"}[opener]
        inner = draw(st.sampled_from([b"", b"0", b'"x"', b"{}"]))
        return kind, lambda path: hostile.raw_safetensors(path, opener * depth + inner + closer * depth)
    if kind == "non-json-header":
        raw = draw(st.binary(min_size=1, max_size=300))
        return kind, lambda path: hostile.raw_safetensors(path, raw, bytes(draw_pad(raw)))
    if kind == "foreign-json":
        value = draw(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                                  lambda children: st.lists(children, max_size=4)
                                  | st.dictionaries(st.text(max_size=5), children, max_size=4), max_leaves=20))
        raw = json.dumps(value).encode()
        return kind, lambda path: hostile.raw_safetensors(path, raw, bytes(144))
    if kind == "wrong-dtype":
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        size = DTYPES[dtype]
        header = {"__metadata__": {"num_samples": "5"},
                  "layer.bias": {"dtype": dtype, "shape": [6], "data_offsets": [0, 6 * size]},
                  "layer.weight": {"dtype": dtype, "shape": [6, 5], "data_offsets": [6 * size, 36 * size]}}
        return kind, lambda path: hostile.raw_safetensors(path, header, bytes(36 * size))
    if kind == "wrong-shape":
        shape = draw(st.lists(st.integers(0, 12), min_size=0, max_size=4).filter(lambda s: s != [6, 5]))
        count = int(np.prod(shape)) if shape else 1
        return kind, lambda path: write_update(path, {"layer.weight": np.ones(count, np.float32).reshape(shape),
                                                      "layer.bias": np.ones(6, np.float32)}, 3)
    if kind == "huge-shape-dims":
        dims = draw(st.lists(st.integers(2 ** 31, 2 ** 70), min_size=1, max_size=3))
        header, data = hostile.valid_header(**{"layer.weight": {"dtype": "F32", "shape": dims,
                                                                "data_offsets": [24, 144]}})
        return kind, lambda path: hostile.raw_safetensors(path, header, data)
    if kind == "non-finite":
        value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        tensor = draw(st.sampled_from(["layer.weight", "layer.bias"]))
        index = draw(st.integers(0, 5))
        seed = draw(st.integers(0, 50))

        def write(path):
            model = random_model(seed)
            model[tensor].reshape(-1)[index] = value
            write_update(path, model, 9)
        return kind, write
    if kind == "bad-num-samples":
        text = draw(st.one_of(
            st.text(max_size=30).filter(lambda t: not PLAIN_COUNT.fullmatch(t)),
            st.integers(19, 6000).map(lambda n: "1" * n),
            st.sampled_from(["²", "٣", " 12", "12 ", "+5", "-5", "1e3", "0x10", "1_000", "５", "", "NaN"]),
        ))
        return kind, lambda path: hostile.bad_num_samples(path, text)
    if kind == "missing":
        return kind, lambda path: None
    if kind == "over-the-bound":
        extra = draw(st.integers(65 * 1024, 400 * 1024))
        return kind, lambda path: hostile.oversized(path, extra)
    protocol = draw(st.integers(2, pickle.HIGHEST_PROTOCOL))
    payload = draw(st.recursive(st.integers() | st.text(max_size=5) | st.floats(),
                                lambda children: st.lists(children, max_size=3), max_leaves=8))
    return kind, lambda path: open(path, "wb").write(pickle.dumps({"layer.weight": payload}, protocol=protocol))


def draw_pad(raw: bytes) -> bytes:
    return bytes(len(raw) % 8)


def run(argv: list[str]) -> tuple[int, dict | None]:
    with tempfile.NamedTemporaryFile(suffix=".json") as result_file:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = cli.main([str(item) for item in argv] + ["--result-file", result_file.name])
        text = open(result_file.name).read()
    result = json.loads(text) if text else None
    assert "Traceback" not in err.getvalue()
    return code, result


def read_all(uri: str) -> bytes:
    location = store.parse_uri(uri)
    return open(location.key, "rb").read() if location.is_local else store.read_bytes(uri)


def check_one_hostile_update(folder_uri: str, local: str, kind: str, write, strategy: str, valid: int,
                             position: int, seed: int) -> None:
    """Write the updates (to `local`, then to `folder_uri` when that is S3), aggregate with and without the
    hostile one, compare."""
    base = f"{folder_uri}/round-0000/global.safetensors"
    updates_uri = f"{folder_uri}/round-0001/updates"
    names = [f"d{index:03d}" for index in range(valid + 1)]
    bad_name = names.pop(min(position, valid))
    os.makedirs(os.path.join(local, "files"), exist_ok=True)

    def put(path: str, uri: str) -> None:
        if not store.parse_uri(uri).is_local or store.parse_uri(uri).key != path:
            store.write_file(uri, path)

    put(write_update(os.path.join(local, "files", "global"), random_model(1000 + seed), 0, round=0), base)
    good = []
    for index, name in enumerate(names):
        path = write_update(os.path.join(local, "files", name), random_model(seed * 10 + index), 10 + index, round=1)
        good.append(f"{updates_uri}/{name}.safetensors")
        put(path, good[-1])
    bad = f"{updates_uri}/{bad_name}.safetensors"
    bad_path = os.path.join(local, "files", bad_name)
    write(bad_path)
    if os.path.exists(bad_path):
        put(bad_path, bad)
    common = ["aggregate", "--round", 1, "--base", base, "--on-invalid", "skip", "--strategy", strategy]
    outputs = {}
    for label, updates in (("with", sorted(good + [bad])), ("without", good)):
        flags = [f"--state-out={folder_uri}/{label}-state.safetensors"] if strategy in ("fedavgm", "fedadam") else []
        code, result = run(common + ["--output", f"{folder_uri}/{label}.safetensors", *flags, *updates])
        assert code == 0, (kind, result)
        assert result["updates"] == valid, (kind, result)
        outputs[label] = [read_all(f"{folder_uri}/{label}.safetensors")] + [
            read_all(f"{folder_uri}/{label}-state.safetensors") for _ in flags]
        if label == "with":
            assert [item["uri"] for item in result["rejected"]] == [bad], (kind, result)
            assert 0 < len(result["rejected"][0]["reason"]) <= 300
        else:
            assert result["rejected"] == []
    # The same bytes but for the metadata that counts updates (equal too) and nothing else.
    assert outputs["with"] == outputs["without"], kind


LOCAL_CASES = (hostile_updates(), st.sampled_from(STRATEGIES), st.integers(3, 5), st.integers(0, 5),
               st.integers(0, 1000))


def check_local(case, strategy, valid, position, seed) -> None:
    kind, write = case
    with tempfile.TemporaryDirectory(prefix="fedtask-fuzz-") as folder:
        check_one_hostile_update(f"file://{folder}/store", folder, kind, write, strategy, valid, position, seed)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(*LOCAL_CASES)
def test_one_hostile_update_never_fails_the_round_local(case, strategy, valid, position, seed):
    check_local(case, strategy, valid, position, seed)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(*LOCAL_CASES)
def test_one_hostile_update_never_fails_the_round_local_long(case, strategy, valid, position, seed):
    check_local(case, strategy, valid, position, seed)


@st.composite
def byte_mutations(draw):
    data = bytearray(_valid_bytes(draw(st.integers(0, 20))))
    for _ in range(draw(st.integers(1, 8))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(byte_mutations(), st.sampled_from(STRATEGIES))
def test_random_byte_mutations_never_fail_the_stage(mutated, strategy):
    """A mutated update may still be valid (a changed data byte is just another update); either way, exit 0."""
    with tempfile.TemporaryDirectory(prefix="fedtask-fuzz-") as folder:
        base = write_update(os.path.join(folder, "global"), random_model(99), 0)
        good = [write_update(os.path.join(folder, f"d00{i}.safetensors"), random_model(i), 10 + i) for i in range(3)]
        bad = os.path.join(folder, "d009.safetensors")
        open(bad, "wb").write(mutated)
        code, result = run(["aggregate", "--base", base, "--on-invalid", "skip", "--strategy", strategy,
                            "--output", os.path.join(folder, "out.safetensors"), *good, bad])
        assert code == 0, result
        assert result["updates"] + len(result["rejected"]) == 4
        assert [item["uri"] for item in result["rejected"]] in ([], [bad])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_updates(), st.sampled_from(["fedavg", "median"]), st.integers(0, 3))
def test_one_hostile_update_never_fails_the_round_s3(s3_server_session, case, strategy, position):
    kind, write = case
    with contextlib.ExitStack() as stack:
        saved = dict(os.environ)
        stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
        os.environ.update(s3_server_session.env)
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedtask-fuzz-"))
        check_one_hostile_update(f"s3://fuzz/{uuid.uuid4().hex}", folder, kind, write, strategy, 3, position, 7)
