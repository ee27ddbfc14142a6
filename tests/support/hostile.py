"""Hostile update files: what a Byzantine device can upload instead of a safetensors update.

Every builder writes one file at `path` that must be rejected on its own (the round goes on with the others). The
reference model is `random_model(seed)` (tensors layer.weight F32 [6, 5] and layer.bias F32 [6]).
"""
from __future__ import annotations

import json
import pickle
import struct

import numpy as np

from tests.support.worker import random_model, write_update


def raw_safetensors(path, header, data: bytes = b"", header_size: int | None = None) -> str:
    """Write `header` (a dict, JSON-encoded, or raw bytes) behind an 8-byte length (default: its true length)."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(raw) if header_size is None else header_size))
        stream.write(raw)
        stream.write(data)
    return str(path)


def valid_header(shape_weight=(6, 5), num_samples="10", **entries) -> tuple[dict, bytes]:
    """A header + data of the reference layout; `entries` replaces or adds header entries."""
    weight = int(np.prod(shape_weight)) * 4
    header = {"__metadata__": {"num_samples": num_samples},
              "layer.bias": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
              "layer.weight": {"dtype": "F32", "shape": list(shape_weight), "data_offsets": [24, 24 + weight]}}
    header.update(entries)
    return header, bytes(24 + weight)


def truncated(path, cut: int = 20) -> str:
    write_update(path, random_model(7))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:max(0, len(data) - cut)])
    return str(path)


def bad_header_length(path, claimed: int = 10_000) -> str:
    return raw_safetensors(path, b'{"a": 1}', header_size=claimed)


def huge_header(path, size: int = 100 * 1024 * 1024) -> str:
    """A header that claims `size` bytes and really has them (a sparse file of `[`): a memory attack."""
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", size))
        stream.write(b"[" * 4096)
        stream.truncate(8 + size)
    return str(path)


def huge_metadata(path, size: int = 90 * 1024 * 1024) -> str:
    """A well-formed header of `size` bytes (one long metadata string), no tensors: read whole, it costs memory."""
    raw = b'{"__metadata__":{"num_samples":"5","x":"' + b"1" * size + b'"}}'
    return raw_safetensors(path, raw)


def nested_header(path, depth: int = 100_000) -> str:
    return raw_safetensors(path, b"[" * depth + b"]" * depth)


def nested_metadata(path, depth: int = 50_000) -> str:
    header, data = valid_header()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw = raw.replace(b'"10"}', b'"10","x":' + b"[" * depth + b"]" * depth + b"}", 1)
    return raw_safetensors(path, raw, data)


def non_json_header(path) -> str:
    return raw_safetensors(path, b"\xff\xfe\x00\x01")


def wrong_dtype(path) -> str:
    return write_update(path, {k: v.astype(np.float64) for k, v in random_model(1).items()})


def unhashable_dtype(path, dtype=("F32",)) -> str:
    header, data = valid_header(**{"layer.bias": {"dtype": list(dtype), "shape": [6], "data_offsets": [0, 24]}})
    return raw_safetensors(path, header, data)


def wrong_shape(path) -> str:
    return write_update(path, random_model(1, {"layer.weight": (5, 6), "layer.bias": (6,)}))


def huge_dims(path, dim: int = 2 ** 64) -> str:
    header, data = valid_header(**{"layer.weight": {"dtype": "F32", "shape": [dim, dim],
                                                    "data_offsets": [24, 144]}})
    return raw_safetensors(path, header, data)


def non_finite(path, value: float = float("nan")) -> str:
    model = random_model(8)
    model["layer.weight"][2, 3] = value
    return write_update(path, model)


def bad_num_samples(path, text: str = "²") -> str:
    header, data = valid_header(num_samples=text)
    return raw_safetensors(path, header, data)


def oversized(path, extra: int = 200_000) -> str:
    return write_update(path, random_model(3), 10, note="x" * extra)


def pickle_bytes(path) -> str:
    open(path, "wb").write(pickle.dumps({"layer.weight": [1.0]}))
    return str(path)


def missing(path) -> str:
    return str(path)  # the device exited 0 without uploading


def empty(path) -> str:
    open(path, "wb").close()
    return str(path)
