"""publish: copy the final model to a device-local path (after checking it is a safetensors model whose digest, if it
carries one, matches)."""
from __future__ import annotations

import argparse
import time

from .. import store
from ..tensors import check_integrity, read_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="URI of the final global model")
    parser.add_argument("--output", required=True, help="device-local path (or URI) to copy it to")


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    with store.local_copy(args.input) as path:
        check_integrity(path, read_layout(path, args.input), args.input)
        size = store.write_file(args.output, path)
    return {"uri": args.output, "bytes": size, "seconds": round(time.perf_counter() - started, 4)}
