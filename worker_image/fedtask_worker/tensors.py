"""safetensors files without torch: header parsing, validation of updates, numpy read/write.

Only the safetensors format is ever parsed; nothing here unpickles anything. A file is checked from its header alone
(structure, sizes, dtypes, metadata) before any tensor byte is used; values are checked for NaN/Inf while they are
combined (see aggregation.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct

import numpy as np

from .errors import BadInput

MAX_HEADER_BYTES = 100 * 1024 * 1024
NUMPY_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
FLOAT_DTYPES = {"F64", "F32", "F16"}


class InvalidUpdate(BadInput):
    """An update (or model) file that cannot be used; the message names the object and the reason."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def numpy_dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.dtype]

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclasses.dataclass(frozen=True)
class Layout:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    file_size: int

    def signature(self) -> tuple:
        return tuple(sorted((name, info.dtype, info.shape) for name, info in self.tensors.items()))

    @property
    def parameter_count(self) -> int:
        return sum(info.count for info in self.tensors.values())


def _sniff_foreign_format(head: bytes) -> str | None:
    if head[:1] == b"\x80" and len(head) > 1 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle, not a safetensors file (pickles are never loaded)"
    if head[:4] == b"PK\x03\x04":
        return "is a zip archive (e.g. torch.save output), not a safetensors file"
    if head[:6] == b"\x93NUMPY":
        return "is a .npy file, not a safetensors file"
    return None


def read_layout(path: str, name: str | None = None, max_bytes: int | None = None) -> Layout:
    """Parse and check a safetensors header; `name` (the URI) is used in error messages."""
    name = name or path
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as stream:
            head = stream.read(8)
            if size == 0:
                raise InvalidUpdate(f"{name}: empty file, not a safetensors file")
            foreign = _sniff_foreign_format(head)
            if foreign:
                raise InvalidUpdate(f"{name}: {foreign}")
            if len(head) < 8:
                raise InvalidUpdate(f"{name}: truncated ({size} bytes), shorter than a safetensors header")
            if max_bytes is not None and size > max_bytes:
                raise InvalidUpdate(f"{name}: {size} bytes is over the limit of {max_bytes} bytes")
            (header_size,) = struct.unpack("<Q", head)
            if header_size > MAX_HEADER_BYTES:
                raise InvalidUpdate(f"{name}: header claims {header_size} bytes (limit {MAX_HEADER_BYTES}); "
                                    f"not a safetensors file or corrupted")
            if 8 + header_size > size:
                raise InvalidUpdate(f"{name}: header claims {header_size} bytes but the file has only {size} bytes "
                                    f"(truncated or not a safetensors file)")
            raw_header = stream.read(header_size)
    except OSError as error:
        raise BadInput(f"{name}: cannot read: {error.strerror}") from None
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, ValueError):
        raise InvalidUpdate(f"{name}: header is not valid JSON (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise InvalidUpdate(f"{name}: header is not a JSON object (not a safetensors file)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidUpdate(f"{name}: __metadata__ must map names to strings")
    data_start = 8 + header_size
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for tensor_name, entry in header.items():
        if not isinstance(entry, dict):
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r}: header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in NUMPY_DTYPES:
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r}: unsupported dtype {dtype!r}")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape)):
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r}: shape {shape!r} is not a list of sizes")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r}: bad data_offsets {offsets!r}")
        info = TensorInfo(dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
        expected = info.count * info.numpy_dtype.itemsize
        if offsets[1] - offsets[0] != expected:
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r}: {offsets[1] - offsets[0]} data bytes for shape "
                                f"{list(shape)} {dtype} (needs {expected})")
        if offsets[1] > data_size:
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r} ends at byte {offsets[1]} of the data but the file "
                                f"holds only {data_size} data bytes (truncated)")
        tensors[tensor_name] = info
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            raise InvalidUpdate(f"{name}: tensor data overlaps or has gaps (not a valid safetensors file)")
        position = end
    if position != data_size:
        raise InvalidUpdate(f"{name}: {data_size - position} bytes after the last tensor (corrupted file)")
    return Layout(tensors, metadata, size)


def num_samples_of(layout: Layout, name: str) -> int:
    raw = layout.metadata.get("num_samples")
    if raw is None:
        raise InvalidUpdate(f"{name}: metadata num_samples is missing")
    if not raw.strip().isdigit():
        raise InvalidUpdate(f"{name}: metadata num_samples={raw!r} is not a non-negative integer")
    return int(raw)


def compare_layouts(layout: Layout, reference: Layout, name: str) -> None:
    """Raise InvalidUpdate naming the first difference between an update's tensors and the reference's."""
    missing = sorted(set(reference.tensors) - set(layout.tensors))
    extra = sorted(set(layout.tensors) - set(reference.tensors))
    if missing:
        raise InvalidUpdate(f"{name}: missing tensors {_names(missing)}")
    if extra:
        raise InvalidUpdate(f"{name}: unexpected tensors {_names(extra)}")
    for tensor_name, expected in reference.tensors.items():
        info = layout.tensors[tensor_name]
        if info.shape != expected.shape:
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r} has shape {list(info.shape)}, "
                                f"expected {list(expected.shape)}")
        if info.dtype != expected.dtype:
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r} has dtype {info.dtype}, expected {expected.dtype}")


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_arrays(path: str, name: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a (checked) safetensors file into numpy arrays."""
    layout = read_layout(path, name)
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as stream:
        for tensor_name, info in layout.tensors.items():
            array = np.empty(info.shape, dtype=info.numpy_dtype)
            stream.seek(info.begin)
            if stream.readinto(memoryview(array.reshape(-1)).cast("B")) != info.end - info.begin:
                raise InvalidUpdate(f"{name or path}: tensor {tensor_name!r}: short read")
            arrays[tensor_name] = array
    return arrays, dict(layout.metadata)


def save_arrays(path: str, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> int:
    """Write numpy arrays as safetensors, streaming each tensor (no full-file buffer)."""
    header: dict[str, object] = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    offset = 0
    ordered = sorted(arrays)
    for tensor_name in ordered:
        array = arrays[tensor_name]
        dtype = SAFETENSORS_NAMES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
        if dtype is None:
            raise BadInput(f"tensor {tensor_name!r}: dtype {array.dtype} cannot be stored")
        header[tensor_name] = {"dtype": dtype, "shape": list(array.shape),
                               "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(raw)))
        stream.write(raw)
        for tensor_name in ordered:
            array = np.ascontiguousarray(arrays[tensor_name])
            stream.write(memoryview(array.reshape(-1)).cast("B"))
    return 8 + len(raw) + offset
