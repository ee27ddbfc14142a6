"""init: build the initial global model (seeded) — or check a given one against the model — and write it."""
from __future__ import annotations

import argparse
import time

from .common import add_model_arguments, build_for_dataset, metadata, model_metadata, read_model, write_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="URI to write the initial global model to")
    parser.add_argument("--initial-uri", help="start from this safetensors model instead (checked against --model)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    from ..training import configure_threads, load_model_state, model_state

    started = time.perf_counter()
    configure_threads()
    dataset, model = build_for_dataset(args)
    if args.initial_uri:
        arrays, _ = read_model(args.initial_uri)
        load_model_state(model, arrays, args.initial_uri)
    size = write_model(args.output, model_state(model), metadata(args, "init", **model_metadata(args, dataset)))
    return {"uri": args.output, "bytes": size, "seconds": round(time.perf_counter() - started, 4)}
