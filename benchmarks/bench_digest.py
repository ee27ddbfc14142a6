"""The integrity digest's cost (issue 13): writing, reading and aggregating safetensors files with it vs without it.

Every file fedtask writes records its sha256 (fedtask_worker/tensors.py); readers check it. The peer, in the same run
on the same arrays, is the same code without the digest: the writer as it was before the digest (below,
`write_without_digest`, the loop save_arrays had at 735ebbd), whose files carry no digest keys, so `load_arrays` and
the aggregate stage read them unverified (the path an older file takes). Per size:
- write: save_arrays (hashes while it writes) vs the pre-digest writer;
- read: load_arrays of a file with the digest (hashes while it reads) vs of one without;
- aggregate: aggregate_files (fedavg) of N updates with digests (one parallel verification pass first) vs without.
Sizes: the MNIST MLP of `--model mlp` (784-128-10, 0.41 MB) and a 100 MB tensor set (25 F32 tensors of 1M values).
Best of --repeats; the files live in the page cache (a fresh write is read back), so the figures are CPU cost, not
disk. Prints one JSON line; ratios are with / without.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_digest.py [--repeats 5] [--updates 4] [--megabytes 100]
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import best_time as best

MLP = {"1.weight": (128, 784), "1.bias": (128,), "3.weight": (10, 128), "3.bias": (10,)}


def write_without_digest(path: str, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> int:
    """save_arrays before the digest (735ebbd): the header, then each tensor streamed; no hash."""
    from fedtask_worker.tensors import SAFETENSORS_NAMES

    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    ordered = sorted(arrays)
    for name in ordered:
        header[name] = {"dtype": SAFETENSORS_NAMES[arrays[name].dtype], "shape": list(arrays[name].shape),
                        "data_offsets": [offset, offset + arrays[name].nbytes]}
        offset += arrays[name].nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(raw)))
        stream.write(raw)
        for name in ordered:
            stream.write(memoryview(np.ascontiguousarray(arrays[name]).reshape(-1)).cast("B"))
    return 8 + len(raw) + offset




def measure(name: str, shapes: dict[str, tuple[int, ...]], updates: int, repeats: int, folder: str) -> dict:
    from fedtask_worker.combine import aggregate_files
    from fedtask_worker.tensors import load_arrays, read_layout, save_arrays

    rng = np.random.default_rng(0)
    models = [{key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
              for _ in range(updates)]
    meta = {"num_samples": "100", "round": "1", "stage": "train"}
    writers = {"digest": save_arrays, "none": write_without_digest}
    paths = {kind: [os.path.join(folder, f"{name}-{kind}-{index}.safetensors") for index in range(updates)]
             for kind in writers}
    result: dict = {"bytes": 0}
    for kind, writer in writers.items():
        result[f"write_seconds_{kind}"] = best(lambda: writer(paths[kind][0], models[0], meta), repeats)
        for path, model in zip(paths[kind], models):
            writer(path, model, meta)
    assert read_layout(paths["digest"][0]).integrity is not None and read_layout(paths["none"][0]).integrity is None
    result["bytes"] = os.path.getsize(paths["digest"][0])
    for kind in writers:
        result[f"read_seconds_{kind}"] = best(lambda: load_arrays(paths[kind][0]), repeats)
    outputs = {}
    for kind in writers:
        files = {f"s3://b/t/updates/d{index:03d}.safetensors": path for index, path in enumerate(paths[kind])}
        result[f"aggregate_seconds_{kind}"] = best(lambda: outputs.__setitem__(kind, aggregate_files(files)), repeats)
    same = all(np.array_equal(outputs["digest"].arrays[key], outputs["none"].arrays[key]) for key in shapes)
    for step in ("write", "read", "aggregate"):
        result[f"{step}_ratio"] = round(result[f"{step}_seconds_digest"] / result[f"{step}_seconds_none"], 3)
    result = {key: round(value, 5) if isinstance(value, float) else value for key, value in result.items()}
    result.update(updates=updates, aggregates_identical=same,
                  digest_megabytes_per_second=round(result["bytes"] / 2**20 / max(
                      result["read_seconds_digest"] - result["read_seconds_none"], 1e-9), 1))
    for path in paths["digest"] + paths["none"]:
        os.unlink(path)
    return result


def hash_speeds(megabytes: int, repeats: int) -> dict:
    """MB/s of the digest (sha256) over bytes in memory, and of the alternatives measured: blake2b, zlib's crc32 (a
    32-bit check: every single-bit and burst error of up to 32 bits, not collision resistant)."""
    import hashlib
    import zlib

    data = np.random.default_rng(1).integers(0, 256, megabytes * 2**20, dtype=np.uint8).tobytes()
    functions = {"sha256": lambda: hashlib.sha256(data).digest(), "blake2b": lambda: hashlib.blake2b(data).digest(),
                 "crc32": lambda: zlib.crc32(data)}
    return {name: round(megabytes / best(function, repeats), 1) for name, function in functions.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=4, help="updates per aggregate (default: 4)")
    parser.add_argument("--megabytes", type=int, default=100, help="size of the large tensor set (default: 100)")
    args = parser.parse_args(argv)
    tensors = max(1, args.megabytes // 4)
    large = {f"layer{index:02d}.weight": (1024, 1024) for index in range(tensors)}
    with tempfile.TemporaryDirectory(prefix="bench-digest-") as folder:
        sizes = {"mnist_mlp": measure("mlp", MLP, args.updates, args.repeats, folder),
                 f"tensors_{tensors * 4}mb": measure("large", large, args.updates, args.repeats, folder)}
    result = {"benchmark": "digest", "repeats": args.repeats, "threads": os.environ.get("FEDTASK_AGGREGATE_THREADS"),
              "sizes": sizes, "in_memory_megabytes_per_second": hash_speeds(args.megabytes, args.repeats),
              "load_average_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
