"""safetensors files without torch: header parsing, validation of updates, numpy read/write.

Only the safetensors format is ever parsed; nothing here unpickles anything. A file is checked from its header alone
(structure, sizes, dtypes, metadata) before any tensor byte is used; values are checked for NaN/Inf while they are
combined (see aggregation.py). Headers come from devices we do not control: the 8-byte length is checked against a
bound before a header byte is read, the JSON is checked to be as flat as a safetensors header (an object of objects
of lists) before it is decoded, and sizes are checked with Python integers (no numpy overflow).

Integrity: every file save_arrays writes carries, in its `__metadata__`, `fedtask_digest_algorithm: sha256` and
`fedtask_digest`: the sha256 of the whole file (length, header, data) as written with the digest's 64 hex digits set
to "0". A reader checks it before any tensor is used (load_arrays while it reads, check_integrity for the files the
aggregate stage reads block by block), so one flipped bit anywhere, in the data or the header, is "digest mismatch" or
a header that no longer parses. The two keys guard each other: a flip that renames one leaves the other, and a file
with one and not the other is refused. A file with neither (written by another tool, e.g. a user's initial model, or
by a fedtask older than its digests) is read unverified, as before. The digest finds corruption, not forgery: whoever
writes a wrong file can write its matching digest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import struct

import numpy as np

from .errors import BadInput, is_resource_exhaustion

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMENSIONS = 32  # numpy's own limit in 1.x
MAX_ELEMENTS = 2 ** 56  # numpy refuses arrays whose dimensions (zeros left out) multiply to 2**63 bytes
MAX_NESTING = 3  # {name: {"shape": [...]}}: a safetensors header is never deeper
NUM_SAMPLES_PATTERN = re.compile(r"[0-9]{1,18}")  # plain ASCII digits, below 10**18 (no "²", "٣", " 1", "1e3")
NUMPY_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
FLOAT_DTYPES = {"F64", "F32", "F16"}
DIGEST_KEY = "fedtask_digest"
DIGEST_ALGORITHM_KEY = "fedtask_digest_algorithm"
DIGEST_ALGORITHM = "sha256"
_DIGEST_PLACEHOLDER = b"0" * 64
# The digest's value in the raw header, as save_arrays writes it (json.dumps escapes any quote inside a string, so the
# pattern cannot match inside another key or value).
_DIGEST_FIELD = re.compile(rb'"fedtask_digest"[ \t\n\r]*:[ \t\n\r]*"([0-9a-f]{64})"')
READ_CHUNK = 1024 * 1024


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
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Integrity:
    """A file's recorded digest, and the hash of its first 8 + header bytes with the digest set to zeros."""

    expected: str
    prefix: object = dataclasses.field(repr=False, compare=False)  # a hashlib object: copy() it, add the data

    def check(self, hasher, name: str) -> None:
        if hasher.hexdigest() != self.expected:
            raise InvalidUpdate(f"{name}: digest mismatch: the file is not what its writer recorded "
                                f"({DIGEST_ALGORITHM} {self.expected[:12]}..., read {hasher.hexdigest()[:12]}...); "
                                f"corrupted in the store or in transit")


@dataclasses.dataclass(frozen=True)
class Layout:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    file_size: int
    header_size: int = 0  # the JSON header's length (the 8 bytes before it not counted)
    integrity: Integrity | None = None  # None: the file carries no digest (see the module's docstring)

    def signature(self) -> tuple:
        return tuple(sorted((name, info.dtype, info.shape) for name, info in self.tensors.items()))

    @property
    def parameter_count(self) -> int:
        return sum(info.count for info in self.tensors.values())


def _sniff_foreign_format(head: bytes) -> str | None:
    # A pickle starts PROTO (0x80, protocol 2-5) and then an opcode, never 0x00. A safetensors file starts with its
    # header length (8 bytes, little-endian): a header of 0x280-0x5FF bytes starts 0x80 0x02..0x05 0x00 as well.
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[2:3] != b"\x00":
        return "is a Python pickle, not a safetensors file (pickles are never loaded)"
    if head[:4] == b"PK\x03\x04":
        return "is a zip archive (e.g. torch.save output), not a safetensors file"
    if head[:6] == b"\x93NUMPY":
        return "is a .npy file, not a safetensors file"
    return None


def check_prefix(name: str, size: int, head: bytes, max_bytes: int | None = None,
                 max_header_bytes: int | None = None) -> int:
    """Check a file from its size and first 8 bytes alone; return the header length it claims.

    The store calls it with a HEAD-like size and a ranged read, so a file that fails is never downloaded.
    """
    if size == 0:
        raise InvalidUpdate(f"{name}: empty file, not a safetensors file")
    foreign = _sniff_foreign_format(head)
    if foreign:
        raise InvalidUpdate(f"{name}: {foreign}")
    if len(head) < 8:
        raise InvalidUpdate(f"{name}: truncated ({size} bytes), shorter than a safetensors header")
    if max_bytes is not None and size > max_bytes:
        raise InvalidUpdate(f"{name}: {size} bytes is over the limit of {max_bytes} bytes")
    (header_size,) = struct.unpack("<Q", head[:8])
    limit = MAX_HEADER_BYTES if max_header_bytes is None else min(max_header_bytes, MAX_HEADER_BYTES)
    if header_size > limit:
        raise InvalidUpdate(f"{name}: header claims {header_size} bytes (limit {limit}); "
                            f"not a safetensors file, corrupted or hostile")
    if 8 + header_size > size:
        raise InvalidUpdate(f"{name}: header claims {header_size} bytes but the file has only {size} bytes "
                            f"(truncated or not a safetensors file)")
    return header_size


# The grammar of every safetensors header, as a regular expression (possessive quantifiers: linear time, no
# backtracking): an object whose values are flat objects (tensor entries, __metadata__) whose values are strings or
# lists of at most MAX_DIMENSIONS non-negative integers of at most 19 digits. Checked before `json.loads`, so no
# nesting (RecursionError), no float/bool/null, no 5000-digit integer and no deep structure reaches the decoder.
_WS = r"[ \t\n\r]*+"
_STRING = r'"(?:[^"\\\x00-\x1f]++|\\.)*+"'
_INTEGER = r"(?:0|[1-9][0-9]{0,18})"
_INTEGERS = rf"\[{_WS}(?:{_INTEGER}{_WS}(?:,{_WS}{_INTEGER}{_WS}){{0,{MAX_DIMENSIONS - 1}}})?\]"
_FIELD = rf"{_STRING}{_WS}:{_WS}(?:{_STRING}|{_INTEGERS})"
_ENTRY = rf"\{{{_WS}(?:{_FIELD}{_WS}(?:,{_WS}{_FIELD}{_WS})*+)?\}}"
_MEMBER = rf"{_STRING}{_WS}:{_WS}{_ENTRY}"
HEADER_GRAMMAR = re.compile(rf"{_WS}\{{{_WS}(?:{_MEMBER}{_WS}(?:,{_WS}{_MEMBER}{_WS})*+)?\}}{_WS}".encode())


def parse_header(raw: bytes, name: str) -> dict:
    """The header as a dict; what no safetensors writer produces is refused before `json.loads` sees it."""
    if not HEADER_GRAMMAR.fullmatch(raw):
        raise InvalidUpdate(f"{name}: header is not valid JSON of a safetensors header (an object of flat tensor "
                            f"entries holding strings and lists of at most {MAX_DIMENSIONS} integers)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidUpdate(f"{name}: header is not valid JSON (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise InvalidUpdate(f"{name}: header is not a JSON object (not a safetensors file)")
    return header


def _is_size(value, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _cut(text: str, limit: int = 60) -> str:
    """Text from a hostile file, cut to fit a one-line reason."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(text: str, limit: int = 80) -> str:
    return _cut(repr(text), limit)


def read_layout(path: str, name: str | None = None, max_bytes: int | None = None,
                max_header_bytes: int | None = None) -> Layout:
    """Parse and check a safetensors header; `name` (the URI) is used in error messages.

    `max_bytes` bounds the file, `max_header_bytes` the header (checked from the first 8 bytes, before the header
    is read).
    """
    name = name or path
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            head = stream.read(8)
            header_size = check_prefix(name, size, head, max_bytes, max_header_bytes)
            raw_header = stream.read(header_size)
    except OSError as error:
        if is_resource_exhaustion(error):
            raise
        raise BadInput(f"{name}: cannot read: {error.strerror}") from None
    if len(raw_header) != header_size:
        raise InvalidUpdate(f"{name}: file shrank while its header was read")
    header = parse_header(raw_header, name)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidUpdate(f"{name}: __metadata__ must map names to strings")
    integrity = _integrity(header_size, raw_header, metadata, name)
    metadata = {key: value for key, value in metadata.items() if key not in (DIGEST_KEY, DIGEST_ALGORITHM_KEY)}
    data_start = 8 + header_size
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for tensor_name, entry in header.items():
        label = _short(tensor_name)
        if not isinstance(entry, dict):
            raise InvalidUpdate(f"{name}: tensor {label}: header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in NUMPY_DTYPES:
            raise InvalidUpdate(f"{name}: tensor {label}: unsupported dtype {_short(dtype, 40)}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS
                or not all(_is_size(d, MAX_ELEMENTS) for d in shape)
                or math.prod(d for d in shape if d) > MAX_ELEMENTS):
            raise InvalidUpdate(f"{name}: tensor {label}: shape {_cut(str(shape), 60)} is not a list of at most "
                                f"{MAX_DIMENSIONS} sizes whose product is at most 2**56")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_size(o, MAX_ELEMENTS) for o in offsets)
                or offsets[0] > offsets[1]):
            raise InvalidUpdate(f"{name}: tensor {label}: bad data_offsets {_cut(str(offsets), 60)}")
        info = TensorInfo(dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
        expected = info.count * info.numpy_dtype.itemsize
        if offsets[1] - offsets[0] != expected:
            raise InvalidUpdate(f"{name}: tensor {label}: {offsets[1] - offsets[0]} data bytes for shape "
                                f"{_cut(str(shape), 60)} {dtype} (needs {expected})")
        if offsets[1] > data_size:
            raise InvalidUpdate(f"{name}: tensor {label} ends at byte {offsets[1]} of the data but the file "
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
    return Layout(tensors, metadata, size, header_size, integrity)


def _integrity(header_size: int, raw_header: bytes, metadata: dict[str, str], name: str) -> Integrity | None:
    """The digest a file records (None: it records none); a header whose digest fields are damaged is refused."""
    algorithm, expected = metadata.get(DIGEST_ALGORITHM_KEY), metadata.get(DIGEST_KEY)
    if algorithm is None and expected is None:
        return None
    if algorithm is None:
        raise InvalidUpdate(f"{name}: digest mismatch: metadata has {DIGEST_KEY} but no {DIGEST_ALGORITHM_KEY} "
                            f"(corrupted header)")
    if algorithm != DIGEST_ALGORITHM:
        raise InvalidUpdate(f"{name}: digest mismatch: unknown {DIGEST_ALGORITHM_KEY} {_short(algorithm, 40)} "
                            f"(this fedtask checks {DIGEST_ALGORITHM}; corrupted header, or a newer writer)")
    if expected is None:
        raise InvalidUpdate(f"{name}: digest mismatch: metadata has {DIGEST_ALGORITHM_KEY} but no {DIGEST_KEY} "
                            f"(corrupted header)")
    fields = list(_DIGEST_FIELD.finditer(raw_header))
    if len(fields) != 1 or fields[0].group(1).decode() != expected:
        raise InvalidUpdate(f"{name}: digest mismatch: {DIGEST_KEY} is not one field of 64 lowercase hex digits "
                            f"(corrupted header)")
    begin, end = fields[0].span(1)
    prefix = hashlib.sha256(struct.pack("<Q", header_size))
    prefix.update(raw_header[:begin])
    prefix.update(_DIGEST_PLACEHOLDER)
    prefix.update(raw_header[end:])
    return Integrity(expected, prefix)


def check_integrity(path: str, layout: Layout, name: str | None = None) -> bool:
    """Read the data region of a checked file and compare its digest (InvalidUpdate "digest mismatch" if it
    differs); False when the file carries no digest."""
    if layout.integrity is None:
        return False
    name = name or path
    hasher = layout.integrity.prefix.copy()  # type: ignore[attr-defined]
    buffer = memoryview(bytearray(READ_CHUNK))
    try:
        with open(path, "rb") as stream:
            stream.seek(8 + layout.header_size)
            remaining = layout.file_size - 8 - layout.header_size
            while remaining > 0:
                got = stream.readinto(buffer[:min(READ_CHUNK, remaining)])
                if not got:
                    raise InvalidUpdate(f"{name}: file shrank while its digest was checked")
                hasher.update(buffer[:got])
                remaining -= got
    except OSError as error:
        if is_resource_exhaustion(error):
            raise
        raise BadInput(f"{name}: cannot read: {error.strerror}") from None
    layout.integrity.check(hasher, name)
    return True


def num_samples_of(layout: Layout, name: str) -> int:
    raw = layout.metadata.get("num_samples")
    if raw is None:
        raise InvalidUpdate(f"{name}: metadata num_samples is missing")
    if not NUM_SAMPLES_PATTERN.fullmatch(raw):
        raise InvalidUpdate(f"{name}: metadata num_samples={_short(raw, 40)} is not a non-negative integer "
                            f"(plain digits 0-9, at most 18)")
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
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r} has shape {_cut(str(list(info.shape)), 60)}, "
                                f"expected {list(expected.shape)}")
        if info.dtype != expected.dtype:
            raise InvalidUpdate(f"{name}: tensor {tensor_name!r} has dtype {info.dtype}, expected {expected.dtype}")


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(_short(n, 60) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_arrays(path: str, name: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a (checked) safetensors file into numpy arrays."""
    layout = read_layout(path, name)
    hasher = layout.integrity.prefix.copy() if layout.integrity else None  # type: ignore[attr-defined]
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as stream:
        # in file order, so the digest covers the data as it lies (read_layout checked it has no gaps)
        for tensor_name, info in sorted(layout.tensors.items(), key=lambda item: item[1].begin):
            array = np.empty(info.shape, dtype=info.numpy_dtype)
            stream.seek(info.begin)
            view = memoryview(array.reshape(-1)).cast("B")
            if stream.readinto(view) != info.end - info.begin:
                raise InvalidUpdate(f"{name or path}: tensor {tensor_name!r}: short read")
            if hasher is not None:
                hasher.update(view)
            arrays[tensor_name] = array
    if layout.integrity is not None:
        layout.integrity.check(hasher, name or path)
    return {tensor_name: arrays[tensor_name] for tensor_name in layout.tensors}, dict(layout.metadata)


def save_arrays(path: str, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> int:
    """Write numpy arrays as safetensors, streaming each tensor (no full-file buffer), with the file's digest in its
    metadata (any digest keys in `metadata`, e.g. from a file read back, are replaced)."""
    meta = {k: str(v) for k, v in metadata.items() if k not in (DIGEST_KEY, DIGEST_ALGORITHM_KEY)}
    meta[DIGEST_ALGORITHM_KEY] = DIGEST_ALGORITHM
    meta[DIGEST_KEY] = _DIGEST_PLACEHOLDER.decode()
    header: dict[str, object] = {"__metadata__": meta}
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
    (field,) = _DIGEST_FIELD.finditer(raw)  # exactly one: a name or value holding the pattern has its quotes escaped
    prefix = struct.pack("<Q", len(raw))
    hasher = hashlib.sha256(prefix)
    hasher.update(raw)
    with open(path, "wb") as stream:
        stream.write(prefix)
        stream.write(raw)
        for tensor_name in ordered:
            array = np.ascontiguousarray(arrays[tensor_name])
            view = memoryview(array.reshape(-1)).cast("B")
            stream.write(view)
            hasher.update(view)
        stream.seek(8 + field.start(1))
        stream.write(hasher.hexdigest().encode())
    return 8 + len(raw) + offset
