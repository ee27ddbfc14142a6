"""adjust: fine-tune the aggregated model on the globally shared dataset (the server-side adjustment), write it as
the next global model, and evaluate it on the validation split. With --no-adjust: evaluate and pass through."""
from __future__ import annotations

import argparse
import time

import numpy as np

from .. import store
from ..errors import BadInput
from .common import add_model_arguments, build_for_dataset, fraction, metadata, read_model, write_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="URI of the aggregated model")
    parser.add_argument("--output", required=True, help="URI to write the next global model to")
    parser.add_argument("--no-adjust", action="store_true", help="skip fine-tuning: evaluate and pass through")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs on the shared set (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="(default: 0.01)")
    parser.add_argument("--shared-fraction", type=fraction, default=0.02,
                        help="class-balanced fraction of the train split forming the shared set (default: 0.02)")
    parser.add_argument("--shared-uri", help="the shared set as an object (safetensors or npz with x, y) instead")
    add_model_arguments(parser)


def shared_set(args: argparse.Namespace, dataset) -> tuple[np.ndarray, np.ndarray]:
    from ..datasets import validate_arrays
    from ..partition import shared_indices

    if args.shared_uri:
        with store.local_copy(args.shared_uri) as path:
            with open(path, "rb") as stream:
                magic = stream.read(4)
            if magic == b"PK\x03\x04":
                try:
                    with np.load(path, allow_pickle=False) as archive:
                        arrays = {"x": archive["x"], "y": archive["y"]}
                except (KeyError, ValueError, OSError) as error:
                    raise BadInput(f"{args.shared_uri}: not an npz with arrays x and y ({error})") from None
            else:
                from ..tensors import load_arrays

                arrays, _ = load_arrays(path, args.shared_uri)
        if "x" not in arrays or "y" not in arrays:
            raise BadInput(f"{args.shared_uri}: the shared set needs tensors x and y")
        return validate_arrays(args.shared_uri, arrays["x"], arrays["y"])
    if args.shared_fraction <= 0:
        raise BadInput("adjustment needs a shared set: --shared-fraction > 0 or --shared-uri")
    indices = shared_indices(dataset.y_train, args.shared_fraction)
    return dataset.x_train[indices], dataset.y_train[indices]


def run(args: argparse.Namespace) -> dict:
    from ..training import adjust_model, compute_device, configure_threads, evaluate, load_model_state, model_state

    started = time.perf_counter()
    configure_threads()
    arrays, _ = read_model(args.input)
    dataset, model = build_for_dataset(args)
    load_model_state(model, arrays, args.input)
    model.to(compute_device())
    result: dict = {}
    if not args.no_adjust:
        x, y = shared_set(args, dataset)
        result["adjust_loss"] = round(adjust_model(model, x, y, args.epochs, args.batch_size, args.learning_rate,
                                                   seed=args.seed * 100003 + args.round), 6)
        result["shared_samples"] = int(len(y))
        arrays = model_state(model)
    size = write_model(args.output, arrays, metadata(args, "adjust", adjusted=str(not args.no_adjust).lower()))
    accuracy, loss = evaluate(model, dataset.x_val, dataset.y_val)
    result.update({"accuracy": round(accuracy, 6), "loss": round(loss, 6), "bytes": size,
                   "seconds": round(time.perf_counter() - started, 4)})
    return result
