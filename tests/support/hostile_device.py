"""A Byzantine device for a real `fedtask run` task, through the bring-your-own-code plug point only.

A task sets `spec.training.step: tests.support.hostile_device:step` and, in `spec.podTemplate.env`,
`HOSTILE_KIND=<kind>` (and optionally `HOSTILE_DEVICE=<shard index>`, default 0). Its train pods import this module
as the task author's code, as a custom image would hold it. At its first batch in a pod's process (not on import:
`fedtask run`'s fork server imports and calls the step once to warm up, without the pod's environment), it replaces
what the train stage writes:
device HOSTILE_DEVICE uploads the hostile file of HOSTILE_KIND to its own update key (or nothing, kind `missing`),
and exits 0 like an honest device. Every other device trains and uploads as usual. No product code is changed; the
plug point gives a task author's code exactly this power (a custom `spec.image` gives more).

The kinds are those of tests/support/hostile.py; those whose rejection depends on the model's layout (dims, dtype,
shape, values, num_samples) are built from the device's real trained tensors, so they reach the check they aim at.
"""
from __future__ import annotations

import json
import os
import random
import struct

import numpy as np

from tests.support import hostile

# kind -> what the aggregate stage must do with it: "rejected" (history[].rejected + an UpdateRejected event),
# "capped" (num_samples clipped to the train pod's report: samples_capped), "clipped" (scaled to clipNorm:
# norm_clipped; the task must set spec.aggregation.clipNorm).
KINDS = {
    "truncated": "rejected",
    "bit_flip_data": "rejected",
    "bit_flip_num_samples": "rejected",
    "bit_flip_anywhere": "rejected",
    "bad_header_length": "rejected",
    "huge_header_100mb": "rejected",
    "nested_header": "rejected",
    "nested_metadata": "rejected",
    "non_json_header": "rejected",
    "pickle": "rejected",
    "empty": "rejected",
    "missing": "rejected",
    "huge_dims_2e64": "rejected",
    "wrong_dtype": "rejected",
    "wrong_shape": "rejected",
    "nan": "rejected",
    "inf": "rejected",
    "num_samples_superscript": "rejected",
    "num_samples_5000_digits": "rejected",
    "oversized": "rejected",
    "claims_1e15_samples": "capped",
    "norm_blowup_1e6": "clipped",
}


def _save(path: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from fedtask_worker.tensors import save_arrays

    save_arrays(path, arrays, meta)


def _real_header(arrays: dict[str, np.ndarray], meta: dict[str, str]) -> tuple[dict, bytes]:
    """The safetensors header and data the honest upload would have (F32 tensors in name order)."""
    header: dict = {"__metadata__": dict(meta)}
    data = bytearray()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name], dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [len(data), len(data) + array.nbytes]}
        data += array.tobytes()
    return header, bytes(data)


def write_hostile(kind: str, path: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """Write the hostile update `kind` at `path`, from the honest device's `arrays` and metadata."""
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}
    first_2d = next(name for name in sorted(arrays) if arrays[name].ndim == 2)
    if kind == "truncated":
        _save(path, arrays, meta)
        with open(path, "r+b") as stream:
            stream.truncate(os.path.getsize(path) - 20)
    elif kind in ("bit_flip_data", "bit_flip_num_samples"):
        # the honest file, one bit flipped after it is written (storage or transit corruption): the lowest mantissa
        # bit of the first value (finite, barely changed), or the lowest bit of num_samples' first digit (still
        # digits: a silently different weight before the digest)
        _save(path, arrays, meta)
        with open(path, "r+b") as stream:
            (header_size,) = struct.unpack("<Q", stream.read(8))
            header = stream.read(header_size)
            field = b'"num_samples":"'
            position = (8 + header_size if kind == "bit_flip_data"
                        else 8 + header.index(field) + len(field))
            stream.seek(position)
            byte = stream.read(1)[0]
            stream.seek(position)
            stream.write(bytes([byte ^ 1]))
    elif kind == "bit_flip_anywhere":
        # one bit anywhere in the file (length, header, digest, padding, data), drawn from the round's metadata
        _save(path, arrays, meta)
        size = os.path.getsize(path)
        bit = random.Random(f"{meta.get('task')}/{meta.get('round')}").randrange(size * 8)
        with open(path, "r+b") as stream:
            stream.seek(bit // 8)
            byte = stream.read(1)[0]
            stream.seek(bit // 8)
            stream.write(bytes([byte ^ (1 << bit % 8)]))
        print(f"hostile_device: bit {bit} of {size * 8} flipped", flush=True)
    elif kind == "bad_header_length":
        hostile.bad_header_length(path)
    elif kind == "huge_header_100mb":
        hostile.huge_header(path)
    elif kind == "nested_header":
        hostile.nested_header(path)
    elif kind == "non_json_header":
        hostile.non_json_header(path)
    elif kind == "pickle":
        hostile.pickle_bytes(path)
    elif kind == "empty":
        hostile.empty(path)
    elif kind == "nested_metadata":
        header, data = _real_header(arrays, meta)
        raw = json.dumps(header, separators=(",", ":")).encode()
        depth = 50_000
        raw = raw.replace(b'"__metadata__":{', b'"__metadata__":{"x":' + b"[" * depth + b"]" * depth + b",", 1)
        hostile.raw_safetensors(path, raw, data)
    elif kind == "huge_dims_2e64":
        header, data = _real_header(arrays, meta)
        header[first_2d]["shape"] = [2 ** 64, 2 ** 64]
        hostile.raw_safetensors(path, header, data)
    elif kind == "wrong_dtype":
        _save(path, {name: value.astype(np.float64) for name, value in arrays.items()}, meta)
    elif kind == "wrong_shape":
        _save(path, {**arrays, first_2d: np.ascontiguousarray(arrays[first_2d].T)}, meta)
    elif kind in ("nan", "inf"):
        poisoned = {**arrays, first_2d: arrays[first_2d].copy()}
        poisoned[first_2d].flat[3] = np.nan if kind == "nan" else np.inf
        _save(path, poisoned, meta)
    elif kind == "num_samples_superscript":
        _save(path, arrays, {**meta, "num_samples": "²"})
    elif kind == "num_samples_5000_digits":
        _save(path, arrays, {**meta, "num_samples": "9" * 5000})
    elif kind == "oversized":
        size = sum(value.nbytes for value in arrays.values())
        _save(path, arrays, {**meta, "note": "x" * (size + 128 * 1024)})
    elif kind == "claims_1e15_samples":
        _save(path, arrays, {**meta, "num_samples": str(10 ** 15)})
    elif kind == "norm_blowup_1e6":
        _save(path, {name: value * np.float32(1e6) for name, value in arrays.items()}, meta)
    else:
        raise ValueError(f"HOSTILE_KIND={kind!r}: not one of {', '.join(KINDS)}")


def _install() -> None:
    kind = os.environ.get("HOSTILE_KIND", "")
    if not kind:
        return
    if kind not in KINDS:
        raise ValueError(f"HOSTILE_KIND={kind!r}: not one of {', '.join(KINDS)}")
    target = int(os.environ.get("HOSTILE_DEVICE", "0"))
    from fedtask_worker import store
    from fedtask_worker.stages import train

    honest_write = train.write_model  # fails here, loudly, if the train stage no longer writes through it

    def write_model(uri: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> int:
        if meta.get("device") != str(target):
            return honest_write(uri, arrays, meta)
        if kind == "missing":
            return 0  # exits 0 without uploading
        with store.writer(uri) as path:
            write_hostile(kind, path, arrays, meta)
            return os.path.getsize(path)

    train.write_model = write_model


_installed_in: int | None = None


def step(model, inputs, targets):
    """The batch's loss as the default step computes it: the device trains honestly, only its upload is hostile."""
    import torch

    global _installed_in
    if _installed_in != os.getpid():  # once per process: a forked pod has its own
        _installed_in = os.getpid()
        _install()
    return torch.nn.functional.cross_entropy(model(inputs), targets)
